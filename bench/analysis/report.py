"""A run's markdown report, built from stored records only (never from a live run): header, tables,
legends, divergences, plots, panel links, and a snapshot of the records beside it."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.analysis.legend import EXTRA_LEGEND, LEGEND
from bench.analysis.summary import (
    REFERENCE_ROW_COLUMNS,
    aligned,
    check_comparable,
    commit_labels,
    image_rows,
    method_label,
    same_protocol,
    seed_means,
    shared_config,
    summarise,
)
from bench.analysis.tables import coverage_section, extra_table, header, markdown_table
from bench.record import Record, RecordConfig
from bench.records import write_record, write_text_atomic
from bench.rundir import RunDir, cell_stem


@dataclass(frozen=True)
class Prepared:
    """What a report is built from, computed once: the run's shared configuration and per-image
    summary, and for each other run (label -> records) its summary and the fields it differs in."""

    records: list[Record]
    config: RecordConfig
    summary: pd.DataFrame
    others: dict[str, list[Record]]
    other_summaries: dict[str, pd.DataFrame]
    differing: dict[str, list[str]]
    failures: list[Record]  # failed records of this run's configuration
    methods: dict[str, str]  # label ("" for this run) -> the method its records were trained with

    @property
    def several_methods(self) -> bool:
        return len(set(self.methods.values())) > 1

    def column_title(self, label: str) -> str:
        """An other run's column title: its label, and its method where the report holds several."""
        return f"{label} (method {self.methods[label]})" if self.several_methods else label


def prepare(records: list[Record], others: dict[str, list[Record]] | None = None,
            failures: list[Record] | None = None) -> Prepared:
    """Check the records (one configuration; others comparable) before anything is computed or written.
    ``failures``: failed records; those of another configuration than the records' are left out."""
    others = others or {}
    config = shared_config(records, per_cell_execution=True)
    other_configs = {label: shared_config(recs, per_cell_execution=True) for label, recs in others.items()}
    differing = {label: check_comparable(config, other, label) for label, other in other_configs.items()}
    mine = [f for f in failures or [] if same_protocol(f.config, config)]
    methods = {"": method_label(config)} | {label: method_label(other) for label, other in other_configs.items()}
    return Prepared(records, config, summarise(records), others,
                    {label: summarise(recs) for label, recs in others.items()}, differing, mine, methods)


def render(records: list[Record], others: dict[str, list[Record]] | None = None, sections: tuple[str, ...] = (),
           failures: list[Record] | None = None) -> str:
    """The report: header, main table, second table with reference rows and ``others`` (label ->
    records of another run of the same protocol with a different recipe), then ``sections``;
    cells that diverged (``failures``, or non-finite losses undone) are marked † and listed."""
    return render_prepared(prepare(records, others, failures), sections)


def fault_lines(records: list[Record], failures: list[Record]) -> list[str]:
    """One line per cell that diverged: failed (with its reason), or with non-finite losses undone."""
    lines = [f"- {r.label} seed {r.seed}: **failed**, no result: {r.reason} (--on-divergence {r.on_divergence})"
             for r in failures]
    for r in records:
        if r.divergences:
            many = "s" if len(r.divergences) > 1 else ""
            lines.append(f"- {r.label} seed {r.seed}: non-finite loss at iteration{many} "
                         f"{', '.join(map(str, r.divergences))}, each undone by restoring the last good state "
                         f"({len(r.divergences)} restore{many}); the result is kept")
    return lines


def render_prepared(prep: Prepared, sections: tuple[str, ...] = ()) -> str:
    records = prep.records
    faults = fault_lines(records, prep.failures)
    faulty = frozenset(r.label for r in prep.failures) | frozenset(r.label for r in records if r.divergences)
    parts = [header(records, prep.config, prep.several_methods), markdown_table(prep.summary, seed_means(records), faulty),
             LEGEND]
    if faults:
        parts += ["## † Diverged cells", "Images marked † in the table had a seed whose loss became non-finite. "
                  "A failed seed has no result (its n is lower); an undone one restored the last good state and went on.",
                  "\n".join(faults)]
    extra = extra_table(prep.summary, {prep.column_title(label): s for label, s in prep.other_summaries.items()})
    if extra is not None:
        parts += ["## Second estimates and reference rows computed here", extra, EXTRA_LEGEND]
        for label, recs in prep.others.items():
            seeds = sorted({r.seed for r in recs})
            parts.append(
                f"*{prep.column_title(label)}*: {len(recs)} records (seeds {', '.join(map(str, seeds))}), commit "
                f"{', '.join(commit_labels(recs))}; its configuration differs from this run's only in: "
                f"{', '.join(prep.differing[label]) or 'nothing'}."
            )
    return "\n\n".join(parts + list(sections)) + "\n"


def write_report(
    records: list[Record],
    out: Path,
    records_dir: Path | None = None,
    *,
    others: dict[str, list[Record]] | None = None,
    results_dir: Path | None = None,
    failures: list[Record] | None = None,
    coverage: list[dict] | None = None,
) -> Path:
    """Write the markdown report with its plots (in ``out``'s stem directory: reports/quick.md ->
    reports/quick/), links to the panels in ``results_dir`` that exist, and a snapshot of the records
    it was built from (and of ``others``) into ``records_dir``. ``coverage``: the rows of
    :func:`bench.coverage.coverage`, for a "Coverage of Table 1" section."""
    from bench.analysis.figures import (  # matplotlib: only here
        plot_curves,
        plot_vs_reference,
    )

    prep = prepare(records, others, failures)
    figures_dir = out.parent / out.stem
    sections = coverage_section(coverage) if coverage else []
    if all(r.curve for r in records):  # records written before curves existed get no plots
        curves = plot_curves(records, figures_dir / "psnr_curves.png")
        summary = prep.summary.copy()
        for label, other in prep.other_summaries.items():
            summary[label] = aligned(summary, other)["psnr_mean"].to_numpy()
        rows = (dict(REFERENCE_ROW_COLUMNS) | {"psnr_ema": "EMA of output"}
                | {label: prep.column_title(label) for label in prep.others})
        versus = plot_vs_reference(summary, rows, figures_dir / "psnr_vs_reference.png")
        sections += [
            "## Plots",
            f"![PSNR against iteration per image]({relative_link(curves, out.parent)})",
            "PSNR against iteration per image: mean over seeds of the raw output (band: min to max over seeds), "
            "of its paste-back PSNR (from raw PSNR and loss: MSE_pasted = MSE_raw - loss), of the EMA of the "
            "output, and the linear-interpolation floor.",
            f"![Per-image PSNR against the reference rows]({relative_link(versus, out.parent)})",
            "Per-image PSNR of this run (mean, error bar: sample std over seeds) against the reference rows.",
        ]
    if results_dir is not None:
        sections += panel_links(records, results_dir, out.parent)
    text = render_prepared(prep, tuple(sections))
    if records_dir is not None:
        snapshot_records(records, records_dir)
        for label, recs in prep.others.items():
            snapshot_records(recs, records_dir.with_name(f"records-{slug(label)}"))
    write_text_atomic(out, text)
    return out


def relative_link(target: Path, start: Path) -> str:
    """A markdown link path from the directory ``start`` to ``target``, with forward slashes."""
    return Path(os.path.relpath(target, start)).as_posix()


def slug(label: str) -> str:
    return "-".join("".join(c if c.isalnum() else " " for c in label.lower()).split())


def panel_links(records: list[Record], results_dir: Path, start: Path) -> list[str]:
    """A "Panels" section linking each record's panel PNG, where it exists (the results directory is
    git-ignored: panels show the test images, which are downloaded, not redistributed). A report inside a
    git work tree links only panels inside it: a link out of the repository (a campaign's results under
    ~/dip-runs, say) would be dead for everyone else, so the section says where they are instead."""
    tree = work_tree(start)
    if tree is not None and not results_dir.resolve().is_relative_to(tree):
        return [PANELS_TITLE, "The panels are in the run directory's `panels/` folder, outside this repository: "
                              "not linked."] if any(r.panel for r in records) else []
    lines = []
    for key, name, _ in image_rows(records):
        links = [
            f"[seed {r.seed}]({relative_link(results_dir / r.panel, start)})"
            for r in sorted(records, key=lambda r: r.seed)
            if r.image == key and r.panel and (results_dir / r.panel).is_file()
        ]
        if links:
            lines.append(f"- {name}: {', '.join(links)}")
    if not lines:
        return []
    return [PANELS_TITLE, "\n".join(lines)]


PANELS_TITLE = "## Panels (ground truth | masked input | restored | error x4; in the run directory, not committed)"


def work_tree(path: Path) -> Path | None:
    """The git work tree holding ``path`` (the nearest directory with a .git), or None."""
    path = path.resolve()
    return next((p for p in (path, *path.parents) if (p / ".git").exists()), None)


def snapshot_records(records: list[Record], records_dir: Path) -> None:
    """Copy the records beside the report, replacing any earlier snapshot, so every number has its source
    (records of an older schema are written in the current one: bench.record migrates them on reading)."""
    if records_dir.exists():
        shutil.rmtree(records_dir)
    for record in records:
        write_record(RunDir(records_dir).record(cell_stem(record.image, record.seed)), record)
