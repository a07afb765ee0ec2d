"""Paper-style result tables: rows = methods, columns = settings, cells ``"52.13 ± 0.81"``.

Each table is rendered as Markdown, LaTeX (booktabs) and CSV (long format, numeric ``mean``,
``ci95``, ``n_seeds``, per-seed values). Bold marks the best mean of a column only *within a
comparable group* of at least two rows (same dataset, setting and test variant: plain rows against
plain rows, ICFIL rows against ICFIL rows, never an ICFIL row against rows without it); ties at the
printed precision are all bold. In the ICFIL ablation, bold marks ICFIL only where it beats plain
and every control with a paired 95% interval above zero. Cells may carry a paired difference
``(Δ +3.10 ± 1.20)`` against a reference row on the same episodes. Every table carries notes: the
selection protocol, the test episodes, the seeds and how the ``±`` was computed, and the ICFIL
caveat when ICFIL rows appear.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from purer.errors import ConfigError, DataError
from purer.io import write_text
from purer.report.aggregate import (
    CONTEXT,
    ICFIL_NOTE,
    MAIN_VARIANTS,
    PAIR_KEYS,
    SELECTION_NOTES,
    _variant_rank,
    context_value,
    icfil_verdicts,
    method_rank,
    varying_context,
)
from purer.variants import ICFIL, PLAIN

logger = logging.getLogger(__name__)

DECIMALS = 2
MISSING = "—"
SEED_CI = "t·s/√n"  # the across-seeds CI formula (Student t, ddof 1), as printed in the notes
FACTOR_HEADERS = {"learner": "Learner", "teacher_weighting": "Teacher weighting", "scenario": "Scenario"}
CSV_COLUMNS = (
    ["dataset", "label", "variant", "method", "icfil", "n_way", "n_shot", "setting"]
    + ["mean", "ci95", "n_seeds", "ci_kind", "best", "delta", "delta_ci95"]
    + list(CONTEXT)
    + ["pool", "seeds", "seed_values"]
)


@dataclass(frozen=True)
class Table:
    """One result table.

    Attributes:
        name: file stem, e.g. ``"main"``.
        title: caption title.
        headers: titles of the row-label columns, e.g. ``("Method",)`` or ``("Learner", "Method")``.
        cells: one row per (dataset, labels, setting): the summary columns plus ``labels`` (a tuple
            matching ``headers``), ``mean`` and ``best`` (bool).
        settings: column titles in order, e.g. ``("5-way 1-shot", "5-way 5-shot")``.
        notes: footnote sentences.
        signed: cells are differences (printed with a sign).
    """

    name: str
    title: str
    headers: tuple[str, ...]
    cells: pd.DataFrame
    settings: tuple[str, ...]
    notes: tuple[str, ...]
    signed: bool = False

    @property
    def datasets(self) -> list[str]:
        return list(dict.fromkeys(self.cells["dataset"]))

    def row_keys(self) -> list[tuple[str, tuple[str, ...]]]:
        """(dataset, labels) of each table row, in display order."""
        return list(dict.fromkeys(zip(self.cells["dataset"], self.cells["labels"], strict=True)))

    def cell(self, dataset: str, labels: tuple[str, ...], setting: str) -> pd.Series | None:
        same_labels = pd.Series([lab == labels for lab in self.cells["labels"]], index=self.cells.index)
        match = self.cells[
            (self.cells["dataset"] == dataset) & same_labels & (self.cells["setting"] == setting)
        ]
        return None if match.empty else match.iloc[0]


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------


def build_tables(summary: pd.DataFrame, differences: pd.DataFrame | None = None) -> list[Table]:
    """All tables the data supports: ``main``, the ablations, the differences and the factor tables.

    Args:
        summary: the frame of :func:`purer.report.aggregate.summarise`.
        differences: the frame of :func:`purer.report.aggregate.paired_differences` (optional).

    Returns:
        ``main`` always (plain and ICFIL rows); ``ablation_curriculum`` when PURER and EI are both
        present (PURER's cells carry Δ vs EI); ``ablation_icfil`` when a method has plain and
        ICFIL results (every variant, with Δ vs plain; bold = ICFIL beats plain and all controls);
        ``differences`` when paired differences exist; ``selection`` when best-on-test numbers
        were recorded beside the clean ones; ``learners``, ``teacher_weighting`` and
        ``scenarios`` when that column has more than one value.
    """
    differences = differences if differences is not None else pd.DataFrame()
    main_rows = summary[summary["test_variant"].isin(MAIN_VARIANTS)]
    tables = [make_table("main", "Few-shot test accuracy (%)", main_rows)]
    plain = summary[summary["test_variant"] == PLAIN]
    curriculum = plain[plain["method"].isin(["purer", "ei"])]
    if set(curriculum["method"]) == {"purer", "ei"}:
        cells = with_deltas(curriculum, differences, reference=lambda method, variant: ("ei", variant))
        tables.append(make_table("ablation_curriculum", "Ablation: the curriculum (PURER vs EI)", cells))
    else:
        logger.info("skipping ablation_curriculum: needs both purer and ei results")
    with_icfil = set(summary.loc[summary["test_variant"] == ICFIL, "method"]) & set(plain["method"])
    if with_icfil:
        rows = summary[summary["method"].isin(sorted(with_icfil))]
        cells = with_deltas(rows, differences, reference=lambda method, variant: (method, PLAIN))
        tables.append(icfil_ablation(cells, differences))
    else:
        logger.info("skipping ablation_icfil: no method has results both with and without ICFIL")
    if not differences.empty:
        tables.append(differences_table(differences))
    if summary["best_on_test"].notna().any():
        tables.append(selection_table(plain[plain["best_on_test"].notna()]))
    for factor, name in (
        ("learner", "learners"),
        ("teacher_weighting", "teacher_weighting"),
        ("scenario", "scenarios"),
    ):
        rows = main_rows[main_rows[factor].notna()]
        if rows[factor].nunique() > 1:
            title = f"Accuracy (%) by {FACTOR_HEADERS[factor].lower()}"
            tables.append(make_table(name, title, rows, factor))
        else:
            logger.info("skipping %s table: one value of %s", name, factor)
    return tables


def with_deltas(
    rows: pd.DataFrame, differences: pd.DataFrame, reference: Callable[[str, str], tuple[str, str]]
) -> pd.DataFrame:
    """``rows`` plus ``delta``/``delta_ci95``: the paired difference of each row against the row
    ``reference(method, test_variant)`` of the same cell (NaN where there is none)."""
    cells = rows.copy()
    deltas, widths = [], []
    for _, row in cells.iterrows():
        match = pd.DataFrame()
        if not differences.empty:
            b_method, b_variant = reference(row["method"], row["test_variant"])
            same = (differences["a_method"] == row["method"]) & (differences["a_variant"] == row["test_variant"])
            same &= (differences["b_method"] == b_method) & (differences["b_variant"] == b_variant)
            for key in PAIR_KEYS:
                same &= _same(differences[key], row[key])
            match = differences[same]
        deltas.append(float(match.iloc[0]["difference"]) if not match.empty else math.nan)
        widths.append(float(match.iloc[0]["ci95"]) if not match.empty else math.nan)
    cells["delta"], cells["delta_ci95"] = deltas, widths
    return cells


def _same(column: pd.Series, value: object) -> pd.Series:
    """Elementwise equality that treats missing values as equal."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return column.isna()
    return column == value


def icfil_ablation(cells: pd.DataFrame, differences: pd.DataFrame) -> Table:
    """The ICFIL ablation: every variant of each method, Δ vs plain, bold only where ICFIL beats
    plain and every control present (paired 95% interval above zero)."""
    table = make_table("ablation_icfil", "Ablation: ICFIL and its controls at meta-test time", cells)
    verdicts = icfil_verdicts(differences) if not differences.empty else pd.DataFrame()
    best = []
    for _, cell in table.cells.iterrows():
        helps = False
        if cell["test_variant"] == ICFIL and not verdicts.empty:
            same = verdicts["method"] == cell["method"]
            for key in PAIR_KEYS:
                same &= _same(verdicts[key], cell[key])
            helps = bool(verdicts[same]["helps"].any())
        best.append(helps)
    table.cells["best"] = best
    notes = [n for n in table.notes if not n.startswith("Bold")]
    notes.append(
        "Δ: paired difference to the same method's plain adaptation on the same test episodes (95% t interval). "
        "Controls: plain adaptation with more inner steps (ICFIL's update budget), ICFIL on N(0, 1) noise instead of "
        "inverted images, and ICFIL's extra updates on the real support only. Bold: ICFIL beats plain and every "
        "control (paired interval above zero); "
        + ("it does in the bold cells." if any(best) else "it does in no cell.")
    )
    return Table(table.name, table.title, table.headers, table.cells, table.settings, tuple(notes))


def differences_table(differences: pd.DataFrame) -> Table:
    """Every paired difference as a table: rows = comparisons, cells ``+3.10 ± 1.20`` (points)."""
    cells = differences.copy()
    cells["variant"] = cells["label"]
    cells["method"], cells["icfil"] = cells["a_method"], cells["a_variant"] == ICFIL
    cells["mean"], cells["best"] = cells["difference"], False
    cells["seeds"] = [";".join(p.split(":")[0] for p in str(v).split(";")) for v in cells["seed_differences"]]
    cells["seed_values"] = cells["seed_differences"]
    cells["delta"], cells["delta_ci95"] = math.nan, math.nan
    varying = varying_context(cells)
    cells["labels"] = [_labels(row, None, varying) for _, row in cells.iterrows()]
    cells["_order"] = [
        (row["dataset"], method_rank(row["a_method"]), _variant_rank(row["a_variant"]),
         method_rank(row["b_method"]), _variant_rank(row["b_variant"]))
        for _, row in cells.iterrows()
    ]
    cells = cells.sort_values("_order", kind="stable").drop(columns="_order").reset_index(drop=True)
    settings = sorted(set(cells["setting"]), key=lambda s: _setting_order(cells, s))
    notes = [
        "Paired differences in percentage points on the shared test episodes (a − b per episode, then the mean).",
        "± with one seed: 95% Student t interval over the per-episode differences; with several seeds: "
        "95% Student t interval over the per-seed mean differences.",
        "No bold: the rows are not comparable with each other.",
    ]
    if cells["icfil"].any() or cells["b_variant"].eq(ICFIL).any():
        notes.insert(0, f"{ICFIL_NOTE}.")
    title = "Paired differences (points)"
    datasets = list(dict.fromkeys(cells["dataset"]))
    if len(datasets) == 1:
        title = f"{title} on {datasets[0]}"
    return Table("differences", title, ("Comparison",), cells, tuple(settings), tuple(notes), signed=True)


def selection_table(plain: pd.DataFrame) -> Table:
    """Clean (validation-selected) accuracy beside the best-on-test one, labelled as biased."""
    clean = plain.copy()
    clean["variant"] = clean["variant"] + " — selected on validation"
    biased = plain.copy()
    biased["variant"] = biased["variant"] + " — best-on-test (biased)"
    biased["accuracy"], biased["ci95"] = biased["best_on_test"], math.nan
    biased["test_variant"] = "best-on-test"  # its own bold group
    table = make_table("selection", "Checkpoint selection: clean vs best-on-test", pd.concat([clean, biased]))
    notes = [n for n in table.notes if not n.startswith("Selection")]
    notes.insert(0, "Selection: clean = checkpoint selected on the validation split (the number to report); "
                 "best-on-test = the maximum test accuracy over every saved checkpoint, the authors' protocol, "
                 "optimistically biased (no interval: a maximum over checkpoints).")
    return Table(table.name, table.title, table.headers, table.cells, table.settings, tuple(notes))


def make_table(name: str, title: str, rows: pd.DataFrame, factor: str | None = None) -> Table:
    """A table over ``rows`` (summary rows); ``factor`` adds a leading row-label column.

    Context columns that vary among ``rows`` (other than ``factor``) are appended to the method
    label, e.g. ``"PURER (best-on-test)"``, so that no two rows collide.
    """
    varying = varying_context(rows, exclude=(factor,) if factor else ())
    cells = rows.copy()
    for column in ("delta", "delta_ci95"):
        if column not in cells:
            cells[column] = math.nan
    cells["seed_values"] = cells["seed_accuracies"] if "seed_accuracies" in cells else ""
    cells["labels"] = [_labels(row, factor, varying) for _, row in cells.iterrows()]
    cells["mean"] = cells["accuracy"]
    cells["_order"] = [_order(row, factor, varying) for _, row in cells.iterrows()]
    cells = cells.sort_values("_order", kind="stable").drop(columns="_order").reset_index(drop=True)
    duplicated = cells.duplicated(["dataset", "labels", "setting"], keep=False)
    if duplicated.any():
        clash = cells[duplicated].iloc[0]
        raise DataError(
            f"table {name}: several results for {' / '.join(clash['labels'])} on {clash['dataset']}, "
            f"{clash['setting']} (pools {sorted(set(cells.loc[duplicated, 'pool']))})"
        )
    cells["best"] = _best(cells)
    settings = sorted(set(cells["setting"]), key=lambda s: _setting_order(cells, s))
    headers = ((FACTOR_HEADERS[factor],) if factor else ()) + ("Method",)
    datasets = list(dict.fromkeys(cells["dataset"]))
    if len(datasets) == 1:
        title = f"{title} on {datasets[0]}"
    return Table(name, title, headers, cells, tuple(settings), tuple(table_notes(cells)))


def _labels(row: pd.Series, factor: str | None, varying: list[str]) -> tuple[str, ...]:
    label = row["variant"]
    if varying:
        label += " (" + ", ".join(context_value(c, row[c]) for c in varying) + ")"
    return ((context_value(factor, row[factor]),) if factor else ()) + (label,)


def _order(row: pd.Series, factor: str | None, varying: list[str]) -> tuple:
    context = tuple(_sortable(row[c]) for c in ([factor] if factor else []) + varying)
    return (row["dataset"], context, method_rank(row["method"]), _variant_rank(row["test_variant"]), row["variant"])


def _sortable(value: object) -> tuple[int, str, float]:
    """Sort key for a context value that may be missing, a number or a string."""
    if value is None or pd.isna(value):
        return (2, "", 0.0)
    if isinstance(value, (int, float)):
        return (0, "", float(value))
    return (1, str(value), 0.0)


def _setting_order(cells: pd.DataFrame, setting: str) -> tuple[int, int]:
    row = cells[cells["setting"] == setting].iloc[0]
    return int(row["n_way"]), int(row["n_shot"])


def _best(cells: pd.DataFrame) -> pd.Series:
    """True for the best mean of each comparable group (dataset, setting, test variant) of at least
    two rows, at the printed precision (ties all True)."""
    rounded = cells["mean"].round(DECIMALS)
    groups = [cells["dataset"], cells["setting"], cells["test_variant"]]
    best = rounded.groupby(groups).transform("max")
    size = rounded.groupby(groups).transform("size")
    return (rounded == best) & (size >= 2)


def table_notes(cells: pd.DataFrame) -> list[str]:
    """Footnote sentences: ICFIL caveat, selection protocol, episodes, seeds and the ``±``."""
    notes = []
    if cells["icfil"].astype(bool).any():
        notes.append(f"{ICFIL_NOTE}.")
    selections = [SELECTION_NOTES.get(s, str(s)) for s in dict.fromkeys(cells["selection"])]
    notes.append("Selection: " + "; ".join(selections) + ".")
    episodes = sorted({int(e) for e in cells["episodes"].dropna()})
    if episodes:
        notes.append("Test episodes per run: " + ", ".join(str(e) for e in episodes) + ".")
    notes.append(_seed_note(cells["n_seeds"]))
    if cells["delta"].notna().any():
        notes.append("Δ: paired difference (points) to the reference row on the same test episodes, 95% t interval.")
    notes.append("Bold: best per column within rows of the same test variant (plain with plain, ICFIL with ICFIL).")
    return notes


def _seed_note(n_seeds: pd.Series) -> str:
    across = f"± is the 95% Student interval {SEED_CI} across the per-seed accuracies (s with ddof 1)"
    within = "± is the 95% CI over test episodes"
    low, high = int(n_seeds.min()), int(n_seeds.max())
    if high == 1:
        return f"One seed per cell; {within}."
    if low > 1:
        count = str(low) if low == high else f"{low}–{high}"
        return f"Mean over {count} seeds per cell; {across}."
    return f"Seeds per cell: {low}–{high}; with one seed, {within}; with several, {across}."


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def format_cell(mean: float, ci95: float, signed: bool = False) -> str:
    """``"52.13 ± 0.81"`` at :data:`DECIMALS` decimals (``"+3.10 ± 1.20"`` when ``signed``;
    no ``±`` part when ``ci95`` is NaN)."""
    text = f"{mean:+.{DECIMALS}f}" if signed else f"{mean:.{DECIMALS}f}"
    return text if math.isnan(ci95) else f"{text} ± {ci95:.{DECIMALS}f}"


def _cell_texts(table: Table, dataset: str, labels: tuple[str, ...]) -> list[tuple[str, bool] | None]:
    """(text, best) per setting of one row, None where the row has no result."""
    out: list[tuple[str, bool] | None] = []
    for setting in table.settings:
        cell = table.cell(dataset, labels, setting)
        if cell is None:
            out.append(None)
            continue
        text = format_cell(cell["mean"], cell["ci95"], table.signed)
        if not math.isnan(cell["delta"]):
            text += f" (Δ {format_cell(cell['delta'], cell['delta_ci95'], signed=True)})"
        out.append((text, bool(cell["best"])))
    return out


def render_markdown(table: Table) -> str:
    """A Markdown table with a title line and notes; best cells as ``**…**``."""
    grouped = len(table.datasets) > 1
    headers = (["Dataset"] if grouped else []) + list(table.headers) + list(table.settings)
    align = ["---"] * (len(headers) - len(table.settings)) + ["---:"] * len(table.settings)
    lines = [f"### {table.title}", "", _md_row(headers), _md_row(align)]
    for dataset, labels in table.row_keys():
        texts = [
            MISSING if t is None else (f"**{t[0]}**" if t[1] else t[0])
            for t in _cell_texts(table, dataset, labels)
        ]
        lines.append(_md_row(([dataset] if grouped else []) + list(labels) + texts))
    lines += ["", *(f"*Note.* {note}" for note in table.notes)]
    return "\n".join(lines) + "\n"


def _md_row(items: list[str]) -> str:
    return "| " + " | ".join(item.replace("|", "\\|") for item in items) + " |"


def render_latex(table: Table) -> str:
    """A booktabs ``tabular`` inside a ``table`` float; caption = title + notes; best in ``\\textbf``."""
    n_labels = len(table.headers)
    n_columns = n_labels + len(table.settings)
    lines = [
        "% Generated by `purer report`. Requires \\usepackage{booktabs}.",
        "\\begin{table}[t]",
        "\\centering",
        f"\\caption{{{latex_escape(table.title)}. {latex_escape(' '.join(table.notes))}}}",
        f"\\label{{tab:{table.name}}}",
        f"\\begin{{tabular}}{{{'l' * n_labels}{'c' * len(table.settings)}}}",
        "\\toprule",
        " & ".join(latex_escape(h) for h in (*table.headers, *table.settings)) + " \\\\",
        "\\midrule",
    ]
    grouped = len(table.datasets) > 1
    previous = None
    for dataset, labels in table.row_keys():
        if grouped and dataset != previous:
            if previous is not None:
                lines.append("\\midrule")
            lines.append(f"\\multicolumn{{{n_columns}}}{{l}}{{\\textit{{{latex_escape(dataset)}}}}} \\\\")
            previous = dataset
        texts = [_latex_cell(t) for t in _cell_texts(table, dataset, labels)]
        lines.append(" & ".join([*(latex_escape(x) for x in labels), *texts]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"


def _latex_cell(text: tuple[str, bool] | None) -> str:
    if text is None:
        return "--"
    body = latex_escape(text[0])
    return f"\\textbf{{{body}}}" if text[1] else body


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "σ": r"$\sigma$",
    "·": r"$\cdot$",
    "–": "--",
    "—": "---",
    "−": "$-$",
    "Δ": r"$\Delta$",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX special characters and map the few Unicode symbols the tables use."""
    pieces = str(text).split(SEED_CI)
    escaped = ["".join(_LATEX_SPECIAL.get(ch, ch) for ch in piece) for piece in pieces]
    return "$t\\,s/\\sqrt{n}$".join(escaped)


def render_csv(table: Table) -> str:
    """Long-format CSV: one line per cell, numeric ``mean``, ``ci95``, ``n_seeds``."""
    frame = table.cells.copy()
    frame["label"] = [labels[-1] for labels in frame["labels"]]
    frame["mean"] = frame["mean"].astype(float).round(6)
    frame["ci95"] = frame["ci95"].astype(float).round(6)
    frame["delta"] = frame["delta"].astype(float).round(6)
    frame["delta_ci95"] = frame["delta_ci95"].astype(float).round(6)
    return frame[CSV_COLUMNS].to_csv(index=False, lineterminator="\n")


RENDERERS: dict[str, Callable[[Table], str]] = {"md": render_markdown, "tex": render_latex, "csv": render_csv}


def check_formats(formats: tuple[str, ...]) -> None:
    """Raise ConfigError for a table format without a renderer."""
    unknown = [f for f in formats if f not in RENDERERS]
    if unknown:
        raise ConfigError(f"report.formats: unknown table format {unknown[0]!r} (valid: {sorted(RENDERERS)})")


def write_tables(tables: list[Table], out_dir: str | Path, formats: tuple[str, ...]) -> list[Path]:
    """Atomically write each table as ``<out_dir>/<name>.<format>``; ``main.csv`` is always written
    (it is the DVC plots file)."""
    check_formats(formats)
    out_dir = Path(out_dir)
    written = []
    for table in tables:
        wanted = list(formats) + (["csv"] if table.name == "main" and "csv" not in formats else [])
        for fmt in wanted:
            path = out_dir / f"{table.name}.{fmt}"
            write_text(path, RENDERERS[fmt](table))
            written.append(path)
    return written
