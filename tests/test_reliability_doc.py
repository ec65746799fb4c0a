"""RELIABILITY.md cannot drift: every test it cites exists, and every setting it names is real."""

from __future__ import annotations

import re
from pathlib import Path

from profilehook.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "RELIABILITY.md").read_text()


def cited_tests() -> list[tuple[str, str]]:
    """(test file, test name) for every ``file.py::...::name`` and following ``::name``."""
    cited = []
    for cell in re.findall(r"`([^`]*::[^`]*)`", DOC):
        path, *parts = cell.split("::")
        name = parts[-1].split("[")[0]
        cited.append((path, name))
    # ``::name`` after a full citation in the same cell refers to the file cited before it.
    for row in DOC.splitlines():
        current = None
        for cell in re.findall(r"`([^`]*)`", row):
            if ".py::" in cell:
                current = cell.split("::")[0]
            elif cell.startswith("::") and current:
                cited.append((current, cell.split("::")[-1].split("[")[0]))
    return [(p if p.startswith("tests/") else f"tests/{p}", n) for p, n in cited if p]


def test_every_cited_test_exists():
    cited = cited_tests()
    assert len(cited) > 40
    for path, name in cited:
        if name == "...":
            continue
        source = (ROOT / path).read_text()
        assert re.search(rf"def {re.escape(name)}\b", source), f"{path}::{name}"


def test_every_setting_named_exists():
    known = {name for name, _, _ in Settings().describe()}
    for name in re.findall(r"`(PROFILEHOOK_[A-Z_]+)`", DOC):
        if name != "PROFILEHOOK_FUZZ_EXAMPLES":
            assert name in known, name
