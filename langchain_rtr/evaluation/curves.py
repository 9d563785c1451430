"""Summary numbers of accuracy-cost curves: RouterBench's AIQ and RouteLLM's APGR.

AIQ (RouterBench, Hu et al. 2024, ``evaluation/AIQ.py``): the area under the *non-decreasing
convex hull* of a router's (cost, accuracy) points, divided by the width of the cost range.
RouterBench integrates from the router's cheapest point to the largest cost of any router
compared and divides by that largest cost (so the range starts at 0). Here the range is fixed by
the data instead: ``[cheapest single pair's cost, priciest single pair's cost]``, and the
cheapest single pair's point is added to every curve (any router can send everything to it),
so every method is integrated over the same interval and AIQ reads as "average accuracy over
the single models' cost range". Beyond its priciest point a curve stays flat at its best
accuracy (RouterBench extends it the same way).

APGR (RouteLLM, Ong et al. 2024, ``routellm/evals/evaluate.py``): for a strong and a weak model,
PGR(x) = (acc(x) − acc_weak) / (acc_strong − acc_weak) where x is the share of calls sent to the
strong model; APGR is its average over x in [0, 1] (trapezoidal area). RouteLLM gets the points
by thresholding the router's score at its deciles; here they come from the λ sweep, and the
all-weak (0, acc_weak) and all-strong (1, acc_strong) points are added where missing (they are
the two ends of any threshold sweep).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from langchain_rtr.errors import RTRError


class CurveError(RTRError, ValueError):
    """A curve cannot be summarised (no points, a zero-width range, ...)."""


def _points(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> np.ndarray:
    xs = np.asarray(x, dtype=np.float64).ravel()
    ys = np.asarray(y, dtype=np.float64).ravel()
    if xs.shape != ys.shape:
        raise CurveError(f"x has {xs.size} values and y has {ys.size}")
    keep = np.isfinite(xs) & np.isfinite(ys)
    if not keep.any():
        raise CurveError("a curve needs at least one finite point")
    return np.stack([xs[keep], ys[keep]], axis=1)


def upper_hull(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> np.ndarray:
    """The upper convex hull of points, sorted by x (Andrew's monotone chain), ``[m, 2]``."""
    pts = _points(x, y)
    # sort by x, and for equal x keep only the highest y
    order = np.lexsort((-pts[:, 1], pts[:, 0]))
    pts = pts[order]
    _, first = np.unique(pts[:, 0], return_index=True)
    pts = pts[first]
    hull: list[np.ndarray] = []
    for p in pts:
        while len(hull) >= 2:
            o, a = hull[-2], hull[-1]
            cross = (a[0] - o[0]) * (p[1] - o[1]) - (a[1] - o[1]) * (p[0] - o[0])
            if cross >= 0:  # a lies on or below the segment o-p: not on the upper hull
                hull.pop()
            else:
                break
        hull.append(p)
    return np.array(hull)


def non_decreasing_hull(
    x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray
) -> np.ndarray:
    """The upper convex hull cut at its highest point: the best accuracy reachable for a cost.

    Points after the maximum are dropped (spending more never has to lower accuracy); the curve
    is then read as flat beyond its last point.
    """
    hull = upper_hull(x, y)
    top = int(np.argmax(hull[:, 1]))
    return hull[: top + 1]


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    # np.trapezoid is NumPy >= 2 only; the project supports 1.26.
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2)


def area_under(hull: np.ndarray, lo: float, hi: float) -> float:
    """Mean of the piecewise-linear curve ``hull`` (``[m, 2]``, sorted by x) over ``[lo, hi]``.

    The curve is read as flat beyond its first and last points.
    """
    if not hi > lo:
        raise CurveError(f"the cost range must have positive width, got [{lo}, {hi}]")
    xs, ys = hull[:, 0], hull[:, 1]
    grid = np.unique(np.concatenate([[lo, hi], xs[(xs > lo) & (xs < hi)]]))
    return _trapezoid(np.interp(grid, xs, ys), grid) / (hi - lo)


def aiq(
    cost: Sequence[float] | np.ndarray,
    accuracy: Sequence[float] | np.ndarray,
    single_cost: Sequence[float] | np.ndarray,
    single_accuracy: Sequence[float] | np.ndarray,
) -> float:
    """AIQ of a router's (cost, accuracy) points over the single pairs' cost range.

    Args:
        cost: The router's mean cost at each operating point (e.g. each λ).
        accuracy: Its accuracy at each point.
        single_cost: Each single pair's mean cost; fixes the interval ``[min, max]``.
        single_accuracy: Each single pair's accuracy (the cheapest one's point is added).

    Returns:
        The mean of the non-decreasing convex hull over ``[min single cost, max single cost]``.
    """
    singles = _points(single_cost, single_accuracy)
    lo, hi = float(singles[:, 0].min()), float(singles[:, 0].max())
    if not hi > lo:
        raise CurveError("AIQ needs single pairs of different costs (the range has no width)")
    cheapest = singles[singles[:, 0] == lo]
    cheapest = cheapest[np.argmax(cheapest[:, 1])]
    pts = _points(cost, accuracy)
    pts = np.vstack([pts, cheapest])
    hull = non_decreasing_hull(pts[:, 0], pts[:, 1])
    return area_under(hull, lo, hi)


def apgr(
    strong_fraction: Sequence[float] | np.ndarray,
    accuracy: Sequence[float] | np.ndarray,
    weak_accuracy: float,
    strong_accuracy: float,
) -> float:
    """RouteLLM's average performance gap recovered over strong-call shares in [0, 1].

    Args:
        strong_fraction: Share of questions sent to the strong model at each operating point.
        accuracy: Accuracy at each point.
        weak_accuracy: Accuracy of sending everything to the weak model.
        strong_accuracy: Accuracy of sending everything to the strong model.

    Returns:
        ``∫₀¹ (acc(x) − acc_weak) / (acc_strong − acc_weak) dx``, with acc linear between points
        (a random mix of two neighbouring operating points reaches it).
    """
    gap = strong_accuracy - weak_accuracy
    if not abs(gap) > 0:
        raise CurveError("APGR is undefined when the strong and weak accuracies are equal")
    pts = _points(strong_fraction, accuracy)
    if (pts[:, 0] < -1e-9).any() or (pts[:, 0] > 1 + 1e-9).any():
        raise CurveError("strong-call shares must lie in [0, 1]")
    if not np.isclose(pts[:, 0], 0.0).any():
        pts = np.vstack([pts, [0.0, weak_accuracy]])
    if not np.isclose(pts[:, 0], 1.0).any():
        pts = np.vstack([pts, [1.0, strong_accuracy]])
    order = np.lexsort((pts[:, 1], pts[:, 0]))
    xs, ys = pts[order, 0], pts[order, 1]
    # several points at one share (a plateau of the sweep): use their mean
    ux, inverse = np.unique(xs, return_inverse=True)
    uy = np.bincount(inverse, weights=ys) / np.bincount(inverse)
    pgr = (uy - weak_accuracy) / gap
    return _trapezoid(pgr, ux)


def cost_to_reach(
    cost: Sequence[float] | np.ndarray, accuracy: Sequence[float] | np.ndarray, target: float
) -> float | None:
    """The lowest cost among points whose accuracy is at least ``target`` (None if none is)."""
    pts = _points(cost, accuracy)
    ok = pts[:, 1] >= target - 1e-12
    return float(pts[ok, 0].min()) if ok.any() else None
