r"""Answer extraction and grading: from a model's free text to a final answer, and is it right.

Models end their answers in many ways: ``\\boxed{...}`` (possibly nested, possibly with doubled
braces from an unrendered prompt template), GSM8K's ``#### n``, "the answer is X", a multiple-choice
letter, or just a last number. The extractor prefers the most explicit marker (boxed > #### >
"answer is" > last number) because intermediate numbers in a chain of thought are the usual trap.

Equivalence is lenient where graders usually are: thousands separators, currency, units, percent
signs and LaTeX wrappers are ignored; numbers compare with a relative tolerance of 1e-6 and
fractions equal decimals; simple expressions are compared with sympy under a time guard.
Nothing here raises on odd model output: failures read as "no answer" or "not equivalent".
"""

from __future__ import annotations

import contextlib
import random
import re
import signal
import threading
from collections.abc import Callable
from fractions import Fraction
from typing import Literal, TypeVar

from langchain_rtr.strategies.base import ParsedAnswer

AnswerKind = Literal["number", "choice", "expression", "text", "auto"]
ANSWER_KINDS: tuple[AnswerKind, ...] = ("number", "choice", "expression", "text", "auto")

#: Seconds that one sympy comparison may take before it counts as "not equivalent".
SYMPY_TIMEOUT_S = 2.0
#: Relative tolerance of numeric comparison.
REL_TOL = 1e-6

_MAX_INPUT_CHARS = 200_000
_CHOICE_LETTERS = "A-J"

__all__ = [
    "ANSWER_KINDS",
    "AnswerKind",
    "extract_answer",
    "extract_boxed",
    "grade",
    "is_equivalent",
    "parse_number",
]


# --------------------------------------------------------------------------------------------
# Cleaning
# --------------------------------------------------------------------------------------------


def _balanced(text: str, start: int) -> tuple[str, int] | None:
    """Content of the brace group opening at ``text[start] == '{'`` and the index after it."""
    depth = 0
    for i in range(start, len(text)):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in "{}":
            continue
        if c == "{" and (i == 0 or text[i - 1] != "\\"):
            depth += 1
        elif c == "}" and (i == 0 or text[i - 1] != "\\"):
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
    return None


def _strip_outer_braces(s: str) -> str:
    """``{{982}}`` -> ``982``: drop brace groups that wrap the whole string."""
    s = s.strip()
    while s.startswith("{"):
        got = _balanced(s, 0)
        if got is None or got[1] != len(s):
            break
        s = got[0].strip()
    return s


def _unwrap_commands(s: str, names: tuple[str, ...]) -> str:
    r"""Replace ``\name{X}`` by ``X`` for each command name (nested braces kept intact)."""
    for name in names:
        pattern = "\\" + name
        out: list[str] = []
        i = 0
        while True:
            j = s.find(pattern, i)
            if j < 0:
                out.append(s[i:])
                break
            k = j + len(pattern)
            if k < len(s) and s[k].isalpha():  # a longer command, e.g. \textbf vs \text
                out.append(s[i:k])
                i = k
                continue
            while k < len(s) and s[k] == " ":
                k += 1
            got = _balanced(s, k) if k < len(s) and s[k] == "{" else None
            if got is None:
                out.append(s[i:k])
                i = k
                continue
            out.append(s[i:j])
            out.append(got[0])
            i = got[1]
        s = "".join(out)
    return s


def _clean(s: str) -> str:
    r"""Strip the wrappers models put around an answer: $..$, \\text{}, bold, trailing dots."""
    s = s.strip()
    s = _strip_outer_braces(s)
    for a, b in (("\\[", "\\]"), ("\\(", "\\)"), ("$$", "$$")):
        if s.startswith(a) and s.endswith(b) and len(s) >= len(a) + len(b):
            s = s[len(a) : len(s) - len(b)].strip()
    if len(s) >= 2 and s.startswith("$") and s.endswith("$") and s.count("$") == 2:
        s = s[1:-1].strip()
    s = _unwrap_commands(
        s, ("text", "textbf", "textit", "mathrm", "mathbf", "mbox", "boldsymbol", "operatorname")
    )
    for cmd in ("\\displaystyle", "\\left", "\\right", "\\!", "\\,", "\\;", "\\:"):
        s = s.replace(cmd, "")
    s = s.replace("\\ ", " ").replace("\\%", "%").replace("\\$", "$").replace("−", "-")
    s = s.replace("**", "") if re.fullmatch(r"\*\*.*\*\*", s, flags=re.S) else s
    s = re.sub(r"\s+", " ", s).strip()
    s = s.rstrip(" .,;:!")
    s = _strip_outer_braces(s)
    return s.strip()


# --------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------

_UNIT_WORD = r"[A-Za-z][A-Za-z./² ]{0,40}"
_ATTACHED_UNITS = {
    "km", "m", "cm", "mm", "kg", "g", "mg", "lb", "lbs", "oz", "s", "sec", "h", "hr", "hrs",
    "min", "mins", "ml", "l", "mph", "kmh", "ft", "in", "k", "m2", "cm2", "st", "nd", "rd", "th",
}  # fmt: skip
_NUMBER_RE = re.compile(
    r"^(?P<sign>[-+]?)\s*(?P<num>\d+(?:\.\d*)?|\.\d+)(?:[eE](?P<exp>[-+]?\d{1,3}))?"
    r"(?:\s*/\s*(?P<den>\d+(?:\.\d+)?))?"
    r"(?P<sp>\s*)(?P<unit>" + _UNIT_WORD + r")?$"
)
_FRAC_RE = re.compile(
    r"^(?P<sign>[-+]?)\s*\\[dt]?frac\s*(?:\{\s*(?P<a>\d+(?:\.\d+)?)\s*\}|(?P<a1>\d))"
    r"\s*(?:\{\s*(?P<b>\d+(?:\.\d+)?)\s*\}|(?P<b1>\d))(?P<sp>\s*)(?P<unit>" + _UNIT_WORD + r")?$"
)
# A number inside running text: optional sign (not a hyphen between words/numbers), currency,
# thousands separators, decimals, a simple fraction, or a LaTeX \frac of two integers.
_NUMBER_IN_TEXT = re.compile(
    r"(?<![\w.])[-+−]?\s?\\[dt]?frac\{\d+\}\{\d+\}"
    r"|(?<![\w.,/])[-+−]?[$€£]?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s?/\s?\d+(?![\d,]))?"
    r"|(?<![\w.])[-+−]?\.\d+"
)


def _number_prep(s: str) -> str:
    s = _clean(s)
    if "=" in s:  # "x = 5", "14/20 = 0.7": the value is after the last "="
        s = s.rsplit("=", 1)[1].strip()
    s = s.replace("{,}", "").replace("\\approx", "").replace("~", "")
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)
    s = re.sub(
        r"^[-+]?\s*(?:[$€£¥]|USD|US\$|Rs\.?)\s*",
        lambda m: m.group(0)[0] if m.group(0)[0] in "+-" else "",
        s,
    )  # noqa: E501
    s = s.replace("%", " ").replace("^\\circ", " ").replace("^{\\circ}", " ").replace("°", " ")
    return s.strip()


def parse_number(text: str) -> Fraction | None:
    r"""The exact value of a text that is one number, perhaps with currency, units or percent.

    ``"$1,200.00"`` -> 1200, ``"3/4"`` and ``"\\frac{3}{4}"`` -> 3/4, ``"12 km"`` -> 12,
    ``"50%"`` -> 50 (a percent sign is dropped, not divided out). Anything else -> None.
    """
    try:
        if not isinstance(text, str) or len(text) > 500:
            return None
        s = _number_prep(text)
        m = _FRAC_RE.match(s)
        if m:
            a = Fraction(m.group("a") or m.group("a1"))
            b = Fraction(m.group("b") or m.group("b1"))
            if b == 0 or not _unit_ok(m.group("unit"), m.group("sp")):
                return None
            value = a / b
            return -value if m.group("sign") == "-" else value
        m = _NUMBER_RE.match(s)
        if not m or not _unit_ok(m.group("unit"), m.group("sp")):
            return None
        value = Fraction(m.group("num"))
        if m.group("exp"):
            value *= Fraction(10) ** int(m.group("exp"))
        if m.group("den"):
            den = Fraction(m.group("den"))
            if den == 0:
                return None
            value /= den
        return -value if m.group("sign") == "-" else value
    except (ValueError, ZeroDivisionError, OverflowError):
        return None


def _unit_ok(unit: str | None, space: str | None) -> bool:
    """A unit must be separated by a space, or be a known short unit ("48g", "12km")."""
    if not unit:
        return True
    if space:
        return True
    return unit.strip().lower().rstrip(".") in _ATTACHED_UNITS


def _format_number(value: Fraction) -> str:
    """Canonical text: integers plainly, terminating decimals as decimals, else ``p/q``."""
    if value.denominator == 1:
        return str(value.numerator)
    twos = fives = 0
    den = value.denominator
    while den % 2 == 0:
        den //= 2
        twos += 1
    while den % 5 == 0:
        den //= 5
        fives += 1
    if den == 1 and max(twos, fives) <= 30:
        places = max(twos, fives)
        scaled = abs(value) * 10**places
        digits = str(scaled.numerator).rjust(places + 1, "0")
        sign = "-" if value < 0 else ""
        return f"{sign}{digits[:-places]}.{digits[-places:]}"
    return f"{value.numerator}/{value.denominator}"


def _last_number(text: str) -> str | None:
    found = None
    for m in _NUMBER_IN_TEXT.finditer(text):
        found = m.group(0)
    return found.replace(" ", "").replace("−", "-") if found else None


def _numbers_close(a: Fraction, b: Fraction) -> bool:
    if a == b:
        return True
    fa, fb = float(a), float(b)
    return abs(fa - fb) <= max(REL_TOL * max(abs(fa), abs(fb)), 1e-12)


# --------------------------------------------------------------------------------------------
# Markers
# --------------------------------------------------------------------------------------------

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def extract_boxed(text: str) -> str | None:
    r"""Content of the last ``\boxed{...}``/``\fbox{...}``/``\boxed 5``; ``{{x}}`` gives ``x``."""
    last: str | None = None
    for m in _BOXED_RE.finditer(text):
        k = m.end()
        while k < len(text) and text[k] == " ":
            k += 1
        if k < len(text) and text[k] == "{":
            got = _balanced(text, k)
            if got is not None:
                last = _strip_outer_braces(got[0])
        else:
            bare = re.match(r"[^\s$]+", text[k:])
            if bare and k > m.end():  # "\boxed 5" needs the space
                last = bare.group(0)
    return last


_HASH_RE = re.compile(r"####\s*([^\n]+)")
_ANSWER_IS_RE = re.compile(
    r"(?:final answer|the answer|answer)\s*(?:is|:|=)\s*:?\s*(?P<ans>[^\n]+)", re.IGNORECASE
)


def _cut_sentence(s: str) -> str:
    """First sentence of a captured tail ("18. So she makes..." -> "18")."""
    m = re.search(r"(?<!\d)\.(?:\s|$)|(?<=\d)\.(?:\s|$)|;|\s-\s", s)
    return s[: m.start()] if m else s


def _answer_is(text: str) -> str | None:
    found = None
    for m in _ANSWER_IS_RE.finditer(text):
        tail = m.group("ans").strip()
        if tail:
            found = _cut_sentence(tail)
    return found


def _choice(text: str) -> str | None:
    """The chosen letter: boxed, "answer is (B)", a final "(B)"/"B." line, or a bare letter."""
    boxed = extract_boxed(text)
    if boxed is not None:
        # the model's explicit final answer; a boxed non-letter ("Cannot be determined") is
        # not a choice, even if an option letter is mentioned elsewhere
        return _letter_of(_clean(boxed))
    found = None
    for m in re.finditer(
        r"(?:answer|option|choice)\s*(?:is|:)\s*:?\s*(?:\*\*)?(?:\((?P<p>[A-Ja-j])\)"
        r"|(?P<u>[" + _CHOICE_LETTERS + r"])(?![\w'’]))",
        text,
        flags=re.IGNORECASE,
    ):
        letter = m.group("p") or m.group("u")
        if m.group("u") and not letter.isupper():
            continue
        found = letter.upper()
    if found:
        return found
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if lines:  # only the last line may be a bare choice
        bare = re.match(r"^(?:\*\*)?\(?([" + _CHOICE_LETTERS + r"])(?:\)|\.|:|\*\*|$)", lines[-1])
        if bare:
            return bare.group(1)
    return _letter_of(_clean(text))


def _letter_of(s: str) -> str | None:
    m = re.fullmatch(r"\(?([" + _CHOICE_LETTERS + r"a-j])\)?(?:[.):]\s*.*)?", s.strip(), flags=re.S)
    if not m:
        return None
    letter = m.group(1)
    # A lower-case letter counts only alone or in parentheses ("(b)"), not "a cat".
    if letter.islower() and not re.fullmatch(r"\(?[a-j]\)?", s.strip()):
        return None
    return letter.upper()


# --------------------------------------------------------------------------------------------
# Public: extraction
# --------------------------------------------------------------------------------------------


def extract_answer(text: str, kind: AnswerKind = "auto") -> str | None:
    r"""The final answer in a model's output, normalised, or None when there is none.

    Args:
        text: The model's output (thinking already removed).
        kind: ``number`` returns a canonical number ("1,234" -> "1234", "3/4" -> "0.75");
            ``choice`` a capital letter A-J; ``expression``/``auto`` the cleaned final answer
            (boxed > ``####`` > "the answer is" > last number); ``text`` the cleaned final
            answer, falling back to the last line.

    Returns:
        The answer text, or None. Never raises.
    """
    try:
        if not isinstance(text, str) or not text.strip():
            return None
        text = text[-_MAX_INPUT_CHARS:]
        if kind == "choice":
            return _choice(text)
        candidate: str | None = None
        boxed = extract_boxed(text)
        if boxed is not None:
            candidate = boxed
        else:
            hashes = _HASH_RE.findall(text)
            candidate = hashes[-1] if hashes else _answer_is(text)
        if kind == "number":
            for source in (candidate, text) if candidate is not None else (text,):
                value = parse_number(source)
                if value is None:
                    raw = _last_number(_number_prep(source))
                    value = parse_number(raw) if raw else None
                if value is not None:
                    return _format_number(value)
            return None
        if candidate is None:
            if kind == "text":
                lines = [ln for ln in text.strip().splitlines() if ln.strip()]
                candidate = lines[-1] if lines else None
            else:
                candidate = _last_number(text)
        if candidate is None:
            return None
        cleaned = _clean(candidate)
        return cleaned or None
    except Exception:  # noqa: BLE001 - model output must never crash the caller
        return None


# --------------------------------------------------------------------------------------------
# Public: equivalence
# --------------------------------------------------------------------------------------------


def _norm_text(s: str) -> str:
    s = _clean(s).lower()
    s = re.sub(r"[\s\"'`*_]+", " ", s)
    s = re.sub(r"^(?:the|a|an) ", "", s.strip())
    return s.strip(" .,;:!")


def is_equivalent(predicted: str | None, gold: str, kind: AnswerKind = "auto") -> bool:
    """Whether an extracted answer matches the gold answer. Never raises.

    Args:
        predicted: The extracted answer (e.g. from :func:`extract_answer`); None is never right.
        gold: The reference answer, in any of the forms the extractor understands.
        kind: ``number``: numeric comparison only; ``choice``: letters, case-insensitive;
            ``text``: normalised string equality; ``expression``/``auto``: numbers, then text,
            then sympy (``auto`` also compares letters when the gold is a letter).
    """
    try:
        if predicted is None or not isinstance(gold, str):
            return False
        predicted = str(predicted)[:_MAX_INPUT_CHARS]
        if kind == "choice":
            g = _letter_of(_clean(gold))
            p = _letter_of(_clean(predicted)) or _choice(predicted)
            return g is not None and p == g
        if kind == "text":
            return _norm_text(predicted) == _norm_text(gold)
        pn, gn = parse_number(predicted), parse_number(gold)
        if pn is not None and gn is not None:
            return _numbers_close(pn, gn)
        if kind == "number":
            if gn is None:
                return False
            value = extract_answer(predicted, "number")
            pv = parse_number(value) if value is not None else None
            return pv is not None and _numbers_close(pv, gn)
        if kind == "auto":
            g_letter = _letter_of(_clean(gold))
            if g_letter is not None and len(_clean(gold)) <= 3:
                return (_letter_of(_clean(predicted)) or _choice(predicted)) == g_letter
        if _norm_text(predicted) == _norm_text(gold):
            return True
        return _sympy_equal(predicted, gold)
    except Exception:  # noqa: BLE001
        return False


def grade(parsed: ParsedAnswer, gold: str, kind: AnswerKind = "auto") -> float:
    """1.0 when the parsed answer matches the gold answer, else 0.0 (no answer is wrong)."""
    if parsed.answer is None:
        return 0.0
    return 1.0 if is_equivalent(parsed.answer, gold, kind) else 0.0


# --------------------------------------------------------------------------------------------
# sympy, guarded
# --------------------------------------------------------------------------------------------

_ALLOWED_NAMES = {
    "sqrt", "pi", "sin", "cos", "tan", "cot", "sec", "csc", "asin", "acos", "atan", "log",
    "ln", "exp", "E", "I", "oo", "Abs",
}  # fmt: skip


def _latex_to_plain(s: str) -> str | None:
    s = _clean(s)
    s = s.replace("\\cdot", "*").replace("\\times", "*").replace("\\div", "/")
    s = s.replace("\\pi", " pi ").replace("\\infty", " oo ").replace("\\ln", " ln ")
    for f in ("sin", "cos", "tan", "cot", "sec", "csc", "log", "exp"):
        s = s.replace("\\" + f, " " + f)
    s = s.replace("^\\circ", "").replace("^{\\circ}", "").replace("%", "").replace("$", "")
    # \frac{a}{b} and \sqrt[n]{x}, \sqrt{x}, innermost first
    for _ in range(20):
        m = re.search(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}", s)
        if m:
            s = s[: m.start()] + f"(({m.group(1)})/({m.group(2)}))" + s[m.end() :]
            continue
        m = re.search(r"\\[dt]?frac\s*(\d)(\d)", s)
        if m:
            s = s[: m.start()] + f"(({m.group(1)})/({m.group(2)}))" + s[m.end() :]
            continue
        m = re.search(r"\\sqrt\s*\[([^\[\]{}]*)\]\s*\{([^{}]*)\}", s)
        if m:
            s = s[: m.start()] + f"(({m.group(2)})**(1/({m.group(1)})))" + s[m.end() :]
            continue
        m = re.search(r"\\sqrt\s*\{([^{}]*)\}", s)
        if m:
            s = s[: m.start()] + f"sqrt({m.group(1)})" + s[m.end() :]
            continue
        m = re.search(r"\\sqrt\s*(\d+|[a-zA-Z])", s)
        if m:
            s = s[: m.start()] + f"sqrt({m.group(1)})" + s[m.end() :]
            continue
        break
    if "\\" in s:
        return None
    s = s.replace("{", "(").replace("}", ")").replace("^", "**")
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)
    if not re.fullmatch(r"[0-9A-Za-z+\-*/(). ]*", s) or "__" in s or len(s) > 200:
        return None
    for name in re.findall(r"[A-Za-z_]\w*", s):
        if len(name) > 1 and name not in _ALLOWED_NAMES:
            return None
    # refuse towers and huge powers: their evaluation cannot be interrupted
    if s.count("**") > 2 or any(len(d) > 60 for d in re.findall(r"\d+", s)):
        return None
    for m in re.finditer(r"\*\*\s*\(?\s*(\d+)", s):
        if int(m.group(1)) > 1000:
            return None
    return s.strip() or None


_T = TypeVar("_T")


class _Timeout(Exception):
    pass


def _with_deadline(fn: Callable[[], _T], seconds: float) -> _T | None:
    """Run ``fn`` for at most ``seconds``; None when it did not finish or raised."""
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):

        def _alarm(signum: int, frame: object) -> None:
            raise _Timeout

        previous = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            return fn()
        except Exception:  # noqa: BLE001 - _Timeout or a sympy failure
            return None
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)
    box: list[_T] = []

    def _target() -> None:
        with contextlib.suppress(Exception):
            box.append(fn())

    worker = threading.Thread(target=_target, daemon=True, name="rtr-sympy")
    worker.start()
    worker.join(seconds)
    return box[0] if box else None


def _sympy_equal(a: str, b: str) -> bool:
    pa, pb = _latex_to_plain(a), _latex_to_plain(b)
    if pa is None or pb is None:
        return False

    def compare() -> bool:
        import sympy
        from sympy.parsing.sympy_parser import (
            convert_xor,
            implicit_multiplication_application,
            parse_expr,
            standard_transformations,
        )

        transformations = (
            *standard_transformations,
            implicit_multiplication_application,
            convert_xor,
        )
        local = {"ln": sympy.log, "E": sympy.E, "I": sympy.I}
        ea = parse_expr(pa, transformations=transformations, local_dict=local, evaluate=True)
        eb = parse_expr(pb, transformations=transformations, local_dict=local, evaluate=True)
        diff = sympy.simplify(ea - eb)
        if diff == 0:
            return True
        symbols = sorted(diff.free_symbols, key=str)
        rng = random.Random(0)
        for _ in range(3):
            point = {s: rng.uniform(0.5, 2.5) for s in symbols}
            ref = complex(sympy.N(ea.subs(point)))
            val = complex(sympy.N(diff.subs(point)))
            if abs(val) > 1e-9 * max(1.0, abs(ref)):
                return False
        return bool(symbols) or abs(complex(sympy.N(diff))) < 1e-12

    return bool(_with_deadline(compare, SYMPY_TIMEOUT_S))
