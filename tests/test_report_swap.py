"""``purer report`` builds the whole report in a temporary folder and swaps it in: an interrupted
report leaves the previous one intact, formats no longer configured disappear, the files are those
the writers produce."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from purer.cli import main as cli_main
from purer.report import aggregate, figures, tables

ACCURACY = {("purer", 1): 50.0, ("ei", 1): 45.0, ("purer", 5): 70.0, ("ei", 5): 68.0}


def write_results(root: Path, shift: float = 0.0) -> Path:
    """A tiny experiment folder: two methods x two shots, one seed, plain meta-tests."""
    for (method, n_shot), accuracy in ACCURACY.items():
        folder = root / "toy" / method / f"5w{n_shot}s" / "seed0" / "test" / "toy" / "plain"
        folder.mkdir(parents=True, exist_ok=True)
        metrics = {
            "method": method, "dataset": "toy", "n_way": 5, "n_shot": n_shot, "n_query": 15, "seed": 0,
            "icfil": False, "selection": "val", "episodes": 100, "accuracy": accuracy + shift, "ci95": 1.0,
        }
        (folder / "metrics.json").write_text(json.dumps(metrics))
    return root


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def temporaries(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def report(monkeypatch: pytest.MonkeyPatch):
    """``purer report --root ROOT --out OUT [-c CONFIG]`` through the CLI's main; returns the exit status."""
    monkeypatch.setattr(cli_main, "COMMANDS", {"report": cli_main.COMMANDS["report"]})

    def run(root: Path, out: Path, config: Path | None = None) -> int:
        return cli_main.main(["report", "--root", str(root), "--out", str(out)] + (["-c", str(config)] if config else []))

    return run


@pytest.mark.parametrize("fault", [KeyboardInterrupt, OSError], ids=["ctrl-c", "disk-fault"])
def test_an_interrupted_report_leaves_the_previous_one_intact(tmp_path, report, monkeypatch, fault):
    root, out = write_results(tmp_path / "results"), tmp_path / "report"
    assert report(root, out) == 0
    before = files(out)
    assert {"summary.json", "tables/main.md", "tables/main.tex", "tables/main.csv", "figures/accuracy.png"} <= set(before)

    write_results(root, shift=5.0)  # new numbers: every file of the next report differs
    reached = []

    def tables_written_then_fault(*args, **kwargs):
        reached.append(sorted(p.name for p in Path(args[1]).parent.joinpath("tables").iterdir()))
        raise fault("halfway")

    monkeypatch.setattr(figures, "save_figures", tables_written_then_fault)
    # Ctrl-C: exit 130; an operating-system fault: the one-line error, exit 2
    assert report(root, out) == (130 if fault is KeyboardInterrupt else 2)
    assert reached and "main.md" in reached[0]  # the new tables were written (into the temporary folder)
    assert files(out) == before  # the previous report, byte for byte: no new table beside old figures
    assert temporaries(tmp_path) == []

    monkeypatch.undo()
    monkeypatch.setattr(cli_main, "COMMANDS", {"report": cli_main.COMMANDS["report"]})
    assert report(root, out) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert json.loads(before["summary.json"]) != summary
    assert "55.00" in (out / "tables" / "main.md").read_text()  # purer 1-shot: 50 + 5


def test_formats_no_longer_configured_disappear(tmp_path, report, write_config):
    root, out = write_results(tmp_path / "results"), tmp_path / "report"
    assert report(root, out, write_config({"report": {"formats": ["md", "tex", "csv"], "figure_formats": ["png", "pdf"]}})) == 0
    assert {"tables/main.tex", "figures/accuracy.pdf"} <= set(files(out))
    narrow = write_config({"report": {"formats": ["md"], "figure_formats": ["png"]}}, name="narrow.yaml")
    assert report(root, out, narrow) == 0
    names = set(files(out))
    assert not [n for n in names if n.endswith((".tex", ".pdf"))]
    assert {"tables/main.md", "tables/main.csv", "figures/accuracy.png", "summary.json", "env.json"} <= names
    assert not [n for n in names if n.endswith(".csv") and n != "tables/main.csv"]  # main.csv: always (DVC plots)


def test_report_files_are_exactly_what_the_writers_produce(tmp_path, report):
    """The swap changes where files are built, not what they hold."""
    root, out = write_results(tmp_path / "results"), tmp_path / "report"
    assert report(root, out) == 0
    summary = aggregate.summarise(aggregate.collect_metrics(root))
    built = tables.build_tables(summary)
    main = next(t for t in built if t.name == "main")
    direct = tmp_path / "direct"
    tables.write_tables(built, direct / "tables", ("md", "tex", "csv"))
    figures.save_figures(figures.build_figures(summary, main, root), direct / "figures", ("png", "pdf"))
    aggregate.write_summary(direct / "summary.json", summary)
    expected = files(direct)
    written = files(out)
    assert set(written) == set(expected) | {"env.json", "config.resolved.yaml", "inputs.json"}
    assert {name: written[name] for name in expected} == expected


def test_report_refuses_to_replace_a_folder_with_other_files(tmp_path, report, capsys):
    root, out = write_results(tmp_path / "results"), tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / ".DS_Store").write_bytes(b"finder")  # hidden names alone would not stop it
    assert report(root, out) == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(
        rf"purer report: error: {re.escape(str(out))} holds 'notes.txt', which is not part of a purer report: "
        r"the report replaces its folder as a whole, so choose a new or empty folder with --out",
        err,
    ), err
    assert files(out) == {"notes.txt": b"keep me", ".DS_Store": b"finder"}
    (out / "notes.txt").unlink()
    assert report(root, out) == 0  # a folder with only hidden files is replaced
    assert "summary.json" in files(out) and ".DS_Store" not in files(out)
    capsys.readouterr()

    afile = tmp_path / "afile"
    afile.write_text("x")
    assert report(root, afile) == 2
    assert capsys.readouterr().err.strip() == f"purer report: error: report folder {afile} is a file, not a folder"
    assert afile.read_text() == "x"
