"""Watching collapse during training: :class:`CollapseMonitor` for any loop, :class:`TrainingBoard` for ``train``.

A monitor finds the model's embedding tables once (:func:`dcollapse.sources.read_tables` on the live module),
then on every ``every_n_steps``-th :meth:`CollapseMonitor.step` measures each field's information abundance,
RankMe and stable rank on the current weights (:func:`dcollapse.metrics.collapse.field_spectra`, on the
weights' device) and hands one record to its log: a TensorBoard ``SummaryWriter`` (anything with
``add_scalar``), a JSONL file path, or a callable.

    monitor = CollapseMonitor(model, every_n_steps=200, log="collapse.jsonl")
    for step, batch in enumerate(loader):
        ...
        optimizer.step()
        monitor.step(step)

A record: ``{"step", "seconds", "mean_ia", "min_ia", "fields": {name: {"rows", "ia", "rankme", "stable_rank"}}}``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from dcollapse.errors import UserError
from dcollapse.metrics.collapse import batch_matrix, field_spectra
from dcollapse.metrics.spectrum import singular_values

if TYPE_CHECKING:
    from dcollapse.models.model import CTRModel

TENSORBOARD_HOWTO = "pip install 'dcollapse[tensorboard]'"
SPECTRUM_FLOOR = 1e-12  # log10(s_i / s_1) of an exactly zero singular value is shown as -12


class ScalarWriter(Protocol):
    """What a monitor needs of a TensorBoard ``SummaryWriter``."""

    def add_scalar(self, tag: str, scalar_value: float, global_step: int | None = None) -> Any: ...


Log = ScalarWriter | str | Path | Callable[[dict[str, Any]], Any] | None


def summary_writer(directory: str | Path) -> Any:
    """A ``torch.utils.tensorboard.SummaryWriter`` writing event files into ``directory``."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(f"TensorBoard logs need the tensorboard package: {TENSORBOARD_HOWTO}") from None
    try:
        return SummaryWriter(log_dir=str(directory))
    except OSError as exc:
        raise UserError(f"{directory}: cannot write TensorBoard logs there ({exc.strerror or exc})") from None


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The TensorBoard scalars of a monitor record: ``ia/<field>``, ``rankme/<field>``, ``collapse/mean_ia``, ..."""
    out = {f"collapse/{key}": record[key] for key in ("mean_ia", "min_ia")}
    for name, m in record["fields"].items():
        out[f"ia/{name}"], out[f"rankme/{name}"] = m["ia"], m["rankme"]
    return out


class JsonlLog:
    """Appends each record as one JSON line to ``path`` (flushed per record, so a killed run keeps its lines)."""

    def __init__(self, path: str | Path) -> None:
        try:
            self.file = Path(path).open("a", encoding="utf-8")  # noqa: SIM115  closed by close()
        except OSError as exc:
            raise UserError(f"{path}: cannot write the monitor log ({exc.strerror or exc})") from None

    def __call__(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class BoardLog:
    """Writes each record's :func:`scalars` to a ``SummaryWriter``-like ``writer`` at the record's step."""

    def __init__(self, writer: ScalarWriter) -> None:
        self.writer = writer

    def __call__(self, record: dict[str, Any]) -> None:
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, record["step"])
        if hasattr(self.writer, "flush"):
            self.writer.flush()


def as_log(log: Log) -> Callable[[dict[str, Any]], Any] | None:
    """The record consumer for ``log``: a writer (has ``add_scalar``), a JSONL path, a callable, or None."""
    if log is None:
        return None
    if hasattr(log, "add_scalar"):
        return BoardLog(log)
    if isinstance(log, str | Path):
        return JsonlLog(log)
    if callable(log):
        return log
    raise TypeError(f"log must be a SummaryWriter, a JSONL file path or a callable, not {type(log).__name__}")


class CollapseMonitor:
    """Per-field IA / RankMe of a model's embedding tables, measured every ``every_n_steps`` steps.

    ``tables`` / ``field_dims`` / ``field_map`` choose and split the tables as in
    :func:`dcollapse.sources.read_tables` (the layout is recognised from the module's parameter names).
    ``history`` keeps every record measured so far.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        every_n_steps: int = 100,
        tables: str | None = None,
        field_dims: list[int] | None = None,
        field_map: str | Path | None = None,
        log: Log = None,
    ) -> None:
        from dcollapse.sources import read_tables

        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        source = read_tables(model, tables=tables, field_dims=field_dims, field_map=field_map)
        self.model = model
        self.every_n_steps = every_n_steps
        self.layout, self.notes = source.layout, source.notes
        self.tables = [  # (state_dict key, field names, first row of each field: int64 [F])
            (t.key, t.fields or [t.name], t.offsets if t.offsets is not None else torch.zeros(1, dtype=torch.int64))
            for t in source.tables
        ]
        self.log = as_log(log)
        self.history: list[dict[str, Any]] = []

    @torch.no_grad()
    def measure(self) -> dict[str, Any]:
        """``{"mean_ia", "min_ia", "fields": {name: {"rows", "ia", "rankme", "stable_rank"}}}`` of the weights now."""
        state = self.model.state_dict()
        fields = {}
        for key, names, offsets in self.tables:
            weight = state[key]
            for fs in field_spectra(weight, offsets.to(weight.device), names):
                s = fs.spectrum
                fields[fs.field] = {"rows": fs.vocab_size, "ia": s.ia, "rankme": s.rankme, "stable_rank": s.stable_rank}
        ias = [m["ia"] for m in fields.values()]
        return {"mean_ia": sum(ias) / len(ias), "min_ia": min(ias), "fields": fields}

    def step(self, step: int) -> dict[str, Any] | None:
        """Measure and log when ``step`` is a multiple of ``every_n_steps``; returns the record (else None).

        A step just measured is not measured again (Lightning repeats ``global_step`` under gradient accumulation).
        """
        if step % self.every_n_steps or (self.history and self.history[-1]["step"] == step):
            return None
        start = time.perf_counter()
        measured = self.measure()
        record = {"step": int(step), "seconds": time.perf_counter() - start, **measured}
        self.history.append(record)
        if self.log is not None:
            self.log(record)
        return record

    def lightning_callback(self) -> Any:
        """A PyTorch Lightning ``Callback`` that calls :meth:`step` with ``trainer.global_step`` after each batch.

        Lightning is imported here, only when asked for (``lightning`` or the older ``pytorch_lightning``).
        """
        try:
            from lightning.pytorch import Callback
        except ImportError:
            try:
                from pytorch_lightning import Callback
            except ImportError:
                raise UserError("lightning_callback() needs PyTorch Lightning: pip install lightning") from None
        monitor = self

        class CollapseCallback(Callback):
            def on_train_batch_end(
                self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
            ) -> None:
                monitor.step(trainer.global_step)

        return CollapseCallback()

    def close(self) -> None:
        """Close a JSONL log this monitor opened (a writer or callable passed in stays the caller's)."""
        if isinstance(self.log, JsonlLog):
            self.log.close()

    def __enter__(self) -> CollapseMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TrainingBoard:
    """``dcollapse train --tensorboard DIR``: one point per epoch for each scalar, and the batch spectrum.

    Scalars: ``train/loss``, ``valid/auc``, ``valid/logloss``, ``collapse/rankme`` (of Z, the fixed batch),
    ``collapse/mean_ia``, ``collapse/min_ia`` and ``ia/<field>``; the histogram ``spectrum/log10_normalized``
    holds log10(s_i / s_1) of Z [B, F*d] (recomputed here from the same fixed batch).
    """

    def __init__(self, directory: str | Path, field_names: Sequence[str]) -> None:
        self.writer = summary_writer(directory)
        self.field_names = list(field_names)

    @torch.no_grad()
    def log_epoch(self, entry: dict[str, Any], model: CTRModel, batch_ids: torch.Tensor) -> None:
        """Write one history ``entry`` (see ``dcollapse.train``) at step = its epoch; ``batch_ids`` [B, F]."""
        epoch = int(entry["epoch"])
        values = {
            "train/loss": entry["train_loss"],
            "valid/auc": entry["valid_auc"],
            "valid/logloss": entry["valid_logloss"],
            "collapse/rankme": entry["rankme"],
            "collapse/mean_ia": entry["mean_ia"],
            "collapse/min_ia": min(entry["field_ia"]),
        }
        values |= {f"ia/{name}": ia for name, ia in zip(self.field_names, entry["field_ia"], strict=True)}
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, epoch)
        s = singular_values(batch_matrix(model, batch_ids))
        if s.numel() and float(s[0]) > 0:
            log_normalized = torch.log10((s / s[0]).clamp_min(SPECTRUM_FLOOR))
            self.writer.add_histogram("spectrum/log10_normalized", log_normalized.cpu(), epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
