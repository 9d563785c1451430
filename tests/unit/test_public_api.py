import subprocess
import sys

import langchain_rtr


def test_every_public_name_resolves() -> None:
    for name in langchain_rtr.__all__:
        assert getattr(langchain_rtr, name) is not None, name


def test_all_is_sorted_and_unique() -> None:
    assert list(langchain_rtr.__all__) == sorted(set(langchain_rtr.__all__))


def test_unknown_name_is_an_attribute_error() -> None:
    try:
        langchain_rtr.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_import_is_light() -> None:
    code = (
        "import sys, langchain_rtr; "
        "heavy = [m for m in ('torch', 'sentence_transformers', 'fastapi', 'langgraph') "
        "if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
