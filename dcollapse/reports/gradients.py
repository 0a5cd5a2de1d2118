"""The mechanism view: the singular spectrum of the loss gradient w.r.t. a fixed batch's embeddings [B, F*d], split
into the parts arriving through the interaction and through the DNN."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dcollapse.errors import UserError
from dcollapse.metrics import DEFAULT_BATCH_ROWS, DEFAULT_SEED
from dcollapse.reports.runs import Run, load_fixed_batch, model_line, model_summary
from dcollapse.reports.spectrum import dataset_document

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SCHEMA = "dcollapse.gradients/2"
LABELS = {"total": "dL/dE total", "interaction": "via interaction", "dnn": "via DNN"}


@dataclass
class GradientReport:
    """``gradients``: "total" and, with a DNN, "interaction" and "dnn" (they sum to total), each a spectrum with
    its Frobenius ``norm``; ``embeddings``: the spectrum of Z itself, for reference."""

    checkpoint: str
    model: dict[str, Any]
    dataset: dict[str, Any]
    split: str
    rows: int
    dim: int
    seed: int
    mode: str
    gradients: dict[str, dict[str, Any]]
    embeddings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **asdict(self)}

    def plot(self, path: str | Path | None = None) -> Figure:
        """The overlaid normalized gradient spectra (and Z's), written to ``path`` when given."""
        from dcollapse import plots

        series = {LABELS[k]: g["normalized"] for k, g in self.gradients.items() if g["norm"] > 0}
        series["embeddings Z (reference)"] = self.embeddings["normalized"]
        title = f"{Path(self.checkpoint).name}: {model_line(self.model)} — gradient spectra"
        return plots.overlay_spectra(series, path, title)


MODES = ("train", "eval")


def gradient_report(
    run: Run, *, split: str = "valid", batch: int = DEFAULT_BATCH_ROWS, seed: int = DEFAULT_SEED, mode: str = "train"
) -> GradientReport:
    """Gradient spectra of a ``dcollapse train`` run on its fixed batch (mean BCE loss).

    ``mode`` "train" (the paper's code: dropout on with torch seeded by ``seed``, batch norm on the statistics of
    each chunk of ``collapse.CHUNK_ROWS`` rows) or "eval" (no dropout, batch norm on its running statistics).
    """
    import torch

    from dcollapse.metrics import collapse

    if run.model is None:
        raise UserError(f"{run.label}: gradients need the model's forward pass, which only `dcollapse train` "
                        f"checkpoints carry (this is a {run.source.layout} state of tables)")  # fmt: skip
    if run.data is None:
        raise UserError(f"{run.label}: gradients need the dataset, but {run.skipped}")
    rows = load_fixed_batch(run.data, split, batch, seed)
    rows.ids, rows.labels = rows.ids.to(run.device or "cpu"), rows.labels.to(run.device or "cpu")
    if mode not in MODES:
        raise UserError(f"--mode must be one of {', '.join(MODES)}, not {mode!r}")
    run.model.train(mode == "train")
    try:
        torch.manual_seed(seed)  # the dropout masks of train mode
        grads = collapse.gradient_spectra(run.model, rows.ids, rows.labels)
    finally:
        run.model.eval()
    z_stats, _ = collapse.matrix_spectra(collapse.batch_matrix(run.model, rows.ids))
    spectra = {"total": grads.total, **grads.branches}
    return GradientReport(
        checkpoint=run.label,
        model=model_summary(run.config),
        dataset=dataset_document(run),
        split=split,
        rows=grads.rows,
        dim=grads.dim,
        seed=seed,
        mode=mode,
        gradients={key: {**asdict(st), "norm": grads.norms[key]} for key, st in spectra.items()},
        embeddings=asdict(z_stats),
    )
