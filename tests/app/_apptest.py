"""AppTest helpers shared by the page tests (needs streamlit; importers skip without it)."""
from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[2]


def ok(at: AppTest) -> AppTest:
    """The page ran without an exception."""
    assert not at.exception, [e.value for e in at.exception]
    return at


def run_page(path: str, timeout: float) -> AppTest:
    """Render ``path`` (relative to the repository) once and check it raised nothing."""
    at = AppTest.from_file(str(REPO / path), default_timeout=timeout)
    at.run()
    return ok(at)


def metric(at: AppTest, label: str) -> str:
    for m in at.metric:
        if m.label == label:
            return m.value
    raise AssertionError(f"metric {label!r} missing; have {[m.label for m in at.metric]}")
