"""``coordinator study --config study.toml``: the pretraining × fraction × seed grid."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer

from shared.cli_support import err, handle_errors, out, print_json, progress_bar


@handle_errors
def study(
    config: Annotated[Path, typer.Option("--config", help="Study config (TOML).")],
    output: Annotated[
        Path | None,
        typer.Option("--out", help="Output folder (default: next to the config, named after it)."),
    ] = None,
    phantom: Annotated[
        bool,
        typer.Option(
            "--phantom/--real-data",
            help="Label the report as phantom data (machinery check, no clinical truth).",
        ),
    ] = False,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=0,
            max=64,
            help="Cells fine-tuned at a time, each in its own process with an equal share of the "
            "CPU threads (0 = one per core), at most as many as fit in half the available "
            "memory (each holds a copy of the external cases). Scores agree with a "
            "sequential run to float precision, not bit for bit, when the threads per cell "
            "differ.",
        ),
    ] = 1,
    condition: Annotated[
        list[str] | None,
        typer.Option(
            "--condition",
            help="Run only this condition's cells now (repeatable), e.g. those whose inputs are "
            "ready while a federation still runs. No report is written (--json prints out, "
            "conditions, cells done and report: null); a later run without --condition keeps "
            "these cells and finishes the study.",
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print output paths as JSON.")] = False,
) -> None:
    """Pretrain each condition, fine-tune on nested fractions of the external training split
    with paired seeds, and write predictions, metrics, paired comparisons and a report.
    A stopped study continues where it stopped."""
    from coordinator.study.config import load_study_config
    from coordinator.study.report import write_outputs
    from coordinator.study.run import cells_of, chosen_conditions, run_study, usable_cores
    from shared.workspace_lock import workspace_lock

    cfg = load_study_config(config)
    out_dir = output or config.with_suffix("")
    only = sorted(set(condition)) if condition else None
    chosen_conditions(cfg, only)  # a misspelt name is refused before the folder is touched
    n = len([c for c in cells_of(cfg) if only is None or c.condition in only])
    with workspace_lock(out_dir), ExitStack() as bar:  # one study per output folder
        advance: list[Callable[[int], None]] = []
        cached = [0]

        def cells_start(k: int) -> None:
            # The bar opens once pretraining is done, its clock and ETA counting new cells only.
            cached[0] = k
            advance.append(bar.enter_context(progress_bar("study cells", n, not json_out, k)))

        def on_cell(cell: object, i: int, total: int) -> None:
            if i > cached[0]:
                advance[0](1)

        results = run_study(
            cfg,
            out_dir,
            progress=on_cell,
            log=lambda s: err.print(s, markup=False) if not json_out else None,
            workers=workers or usable_cores(),
            cells_start=cells_start,
            only=only,
        )
        if only is not None:
            _report_part(results, out_dir, only, json_out)
            return
        paths = write_outputs(results, out_dir, phantom=phantom)
    if json_out:
        print_json({k: str(v) for k, v in paths.items()})
    else:
        out.print(
            f"study complete: {len(results)} cells; report {paths['report']}, "
            f"plot {paths['plot']}, tables in {out_dir}",
            markup=False,
        )


def _report_part(results: list[dict], out_dir: Path, only: list[str], json_out: bool) -> None:
    """A run of some conditions: what it finished, and that the study is not done yet."""
    if json_out:
        print_json({"out": str(out_dir), "conditions": only, "cells": len(results), "report": None})
    else:
        out.print(
            f"{len(results)} cells of {', '.join(only)} done in {out_dir}; run again without "
            "--condition to finish the study and write its report",
            markup=False,
        )
