"""dcollapse: measure dimensional collapse of embeddings in feature-interaction models.

The public API (docs/api.md); names load on first use, so ``import dcollapse`` stays light::

    import dcollapse
    report = dcollapse.analyze("model.pt")           # any checkpoint, module, state_dict or tensor
    dcollapse.rankme(Z); dcollapse.information_abundance(E)
    monitor = dcollapse.CollapseMonitor(model, every_n_steps=500, log="collapse.jsonl")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "analyze": "dcollapse.reports",
    "spectrum_report": "dcollapse.reports",
    "compare_report": "dcollapse.reports",
    "gradient_report": "dcollapse.reports",
    "load_run": "dcollapse.reports",
    "SpectrumReport": "dcollapse.reports",
    "CompareReport": "dcollapse.reports",
    "GradientReport": "dcollapse.reports",
    "rankme": "dcollapse.api",
    "information_abundance": "dcollapse.api",
    "singular_spectrum": "dcollapse.api",
    "field_spectra": "dcollapse.api",
    "read_tables": "dcollapse.sources",
    "CollapseMonitor": "dcollapse.monitor",
}

__all__ = [
    "CollapseMonitor",
    "CompareReport",
    "GradientReport",
    "SpectrumReport",
    "__version__",
    "analyze",
    "compare_report",
    "field_spectra",
    "gradient_report",
    "information_abundance",
    "load_run",
    "rankme",
    "read_tables",
    "singular_spectrum",
    "spectrum_report",
]

if TYPE_CHECKING:
    from dcollapse.api import field_spectra, information_abundance, rankme, singular_spectrum
    from dcollapse.monitor import CollapseMonitor
    from dcollapse.reports import (
        CompareReport,
        GradientReport,
        SpectrumReport,
        analyze,
        compare_report,
        gradient_report,
        load_run,
        spectrum_report,
    )
    from dcollapse.sources import read_tables


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dcollapse' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
