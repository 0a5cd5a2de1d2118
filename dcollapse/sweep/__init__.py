"""Sweeps: a grid of training configs x seeds, run one after another in-process, resumable, summarised.

A grid is an ordered mapping ``name -> config`` (``dcollapse train`` options). :func:`plan` expands it with seeds
into :class:`RunSpec` s (``<name>-s<seed>``), fills in and checks every option with :mod:`dcollapse.config` and
checks ``RUNS_DIR`` against it; :func:`run_sweep` trains the runs still to do and writes, per run,

- ``RUNS_DIR/<run>.pt``: the checkpoint of ``dcollapse train`` (resumed when a run was interrupted);
- ``RUNS_DIR/<run>.json``: the run's result (config, AUC/logloss, batch RankMe, mean IA, cov(Z) spectrum), written
  last, so its presence with the same config marks the run finished and a restarted sweep skips it.

A run that raises is recorded as failed and the sweep goes on. :func:`summarize` aggregates the results of every
seed of a grid entry (mean and sample std), with the RankMe change against the base run (arch ``none``) of the
same backbone and seed; :func:`write_summary` writes ``summary.json``, ``summary.md`` and one overlay PNG of the
normalized cov(Z) spectra per backbone.
"""

from dcollapse.sweep.grids import ABLATIONS, SCALED_SETTINGS, load_grid
from dcollapse.sweep.runner import FIXED_BATCH_SPLIT, RunSpec, fixed_batch_ids, plan, run_name, run_sweep
from dcollapse.sweep.summary import (
    SUMMARY_COLUMNS,
    claim_lines,
    summarize,
    summary_cells,
    summary_markdown,
    write_summary,
)

__all__ = [
    "ABLATIONS",
    "FIXED_BATCH_SPLIT",
    "SCALED_SETTINGS",
    "SUMMARY_COLUMNS",
    "RunSpec",
    "claim_lines",
    "fixed_batch_ids",
    "load_grid",
    "plan",
    "run_name",
    "run_sweep",
    "summarize",
    "summary_cells",
    "summary_markdown",
    "write_summary",
]
