"""Every `docs/method.md §x` reference in the code and docs resolves to a section of docs/method.md."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE = re.compile(r"docs/method\.md\s+§(\d+(?:\.\d+)?)(?:-(\d+(?:\.\d+)?))?(?:\s+item\s+(\d+))?")


def sections() -> set[str]:
    """Section numbers of docs/method.md: its headings, and §8's numbered items as 8.<item>."""
    text = (REPO / "docs" / "method.md").read_text(encoding="utf-8")
    found = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", text, re.M))
    efficiency = text.split("\n## 8.", 1)[1].split("\n## 9.", 1)[0]
    found |= {f"8.{n}" for n in re.findall(r"^(\d+)\. ", efficiency, re.M)}
    return found


def references() -> list[tuple[Path, str]]:
    files = [*REPO.glob("*.md"), *(REPO / "docs").glob("*.md"), *(REPO / "config").glob("*.md"),
             *(REPO / "benchmarks").glob("*.md"), *(REPO / "purer").rglob("*.py"), *(REPO / "benchmarks").glob("*.py"),
             *(REPO / "workflow").rglob("*.smk"), *(REPO / "config").rglob("*.yaml")]
    found = []
    for path in files:
        for start, end, item in REFERENCE.findall(path.read_text(encoding="utf-8")):
            found += [(path, start)] + ([(path, end)] if end else []) + ([(path, f"{start}.{item}")] if item else [])
    return found


def test_every_reference_resolves():
    known = sections()
    found = references()
    assert len(found) > 50  # the code cites the method throughout
    missing = sorted({f"{path.relative_to(REPO)}: §{number}" for path, number in found if number not in known})
    assert not missing, "\n".join(missing)


def test_no_reference_points_outside_the_repository():
    for path in [*REPO.rglob("*.py"), *REPO.rglob("*.md"), *REPO.rglob("*.smk")]:
        if ".venv" in path.parts or "results" in path.parts or path == Path(__file__).resolve():
            continue
        assert "algorithm" + ".md" not in path.read_text(encoding="utf-8"), path
