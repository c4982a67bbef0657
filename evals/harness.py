"""``run_eval``: plan a grid, run it on an executor (resumable), aggregate, report."""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from condense.runtime.errors import CondenseError
from condense.train import protocol_dict

from .grid import FULL_DATA_EPOCHS, EvalConfig, aggregate, plan, run_grid
from .report import fair_table, plot, plot_fair, scores, table, to_json
from condense.runtime.files import holding_lock


@holding_lock(lambda cfg, *a, **k: cfg.json)
def run_eval(cfg: EvalConfig, paths: Sequence[str] = (), *, note: Callable[[str], None] = print,
             bars: bool = True) -> dict[str, Any]:
    """Evaluate the set files ``paths`` (and any baseline ``cfg`` asks for); write ``cfg.json``
    (and ``cfg.plots``); print the table through ``note``. Returns the JSON document.

    Raises CondenseError if any job failed (after every other job finished and the
    partial report was written).
    """
    if cfg.transfer:
        from .transfer import run_transfer

        return run_transfer(cfg, paths, note=note, bars=bars)
    t0 = time.perf_counter()
    groups = plan(cfg, list(paths))
    done, errors = run_grid(groups, cfg, note=note, bars=bars)
    rows = aggregate(groups, cfg, done)
    score_rows = scores(rows, cfg.lrs_weight, cfg.ars_weight, cfg.full_accuracy)
    only_full = cfg.baseline == "full" and not paths
    protocol = {**protocol_dict(cfg.protocol(FULL_DATA_EPOCHS if only_full else None)), "seed": cfg.seed, "runs": cfg.runs,
                **({"full_accuracy_given": cfg.full_accuracy} if cfg.full_accuracy is not None else {}),
                "accs_unit": "percent", "split": cfg.split, "seconds": round(time.perf_counter() - t0, 1)}
    doc = to_json(rows, score_rows, protocol, cfg.json, errors)
    if rows:
        note(table(rows, score_rows))
        fair = fair_table(rows, score_rows)
        if fair:
            note(fair)
    if cfg.plots and rows:
        files = plot(rows, cfg.plots, split=cfg.split)
        files += [f for f in [plot_fair(rows, score_rows, cfg.plots, split=cfg.split)] if f is not None]
        note(f"plots: {', '.join(str(f) for f in files)}")
    note(f"results: {cfg.json} (run folder {cfg.json}.run/)")
    if errors:
        raise CondenseError(f"{len(errors)} evaluation job(s) failed (the others are in {cfg.json}); "
                            f"first: {errors[0]}")
    return doc
