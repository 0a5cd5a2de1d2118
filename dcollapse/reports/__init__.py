"""Collapse reports: what ``dcollapse spectrum``, ``compare`` and ``gradients`` print, as typed documents.

- :func:`analyze` / :func:`spectrum_report` -> :class:`SpectrumReport` (one run, any source of embedding tables);
- :func:`compare_report` -> :class:`CompareReport` (many runs, the source paper's Table 1 layout);
- :func:`gradient_report` -> :class:`GradientReport` (the gradient mechanism view of a ``dcollapse train`` run).

Each report's ``to_dict()`` is the command's ``--json`` document, versioned by its ``schema`` key.
"""

from dcollapse.reports.compare import CompareReport, compare_report
from dcollapse.reports.gradients import GradientReport, gradient_report
from dcollapse.reports.runs import Run, load_fixed_batch, load_run, tables_listing
from dcollapse.reports.spectrum import Gates, SpectrumReport, analyze, spectrum_report

__all__ = [
    "CompareReport",
    "Gates",
    "GradientReport",
    "Run",
    "SpectrumReport",
    "analyze",
    "compare_report",
    "gradient_report",
    "load_fixed_batch",
    "load_run",
    "spectrum_report",
    "tables_listing",
]
