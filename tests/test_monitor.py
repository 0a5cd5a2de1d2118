"""CollapseMonitor in a plain training loop, its logs (TensorBoard, JSONL, callable), and `train --tensorboard`."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from _ctr_fixtures import write_tiny
from torch import nn
from typer.testing import CliRunner

from dcollapse.errors import UserError
from dcollapse.monitor import CollapseMonitor, TrainingBoard

VOCAB = {"user": 40, "item": 60}
DIM = 8


class TwoTower(nn.Module):
    """A user's own model: one table per feature (DeepCTR-Torch's key names), dot-product logit."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding_dict = nn.ModuleDict({name: nn.Embedding(size, DIM) for name, size in VOCAB.items()})

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return (self.embedding_dict["user"](ids[:, 0]) * self.embedding_dict["item"](ids[:, 1])).sum(-1)


def numpy_ia_rankme(weight: np.ndarray) -> tuple[float, float]:
    s = np.linalg.svd(weight.astype(np.float64), compute_uv=False)
    p = s / s.sum() + 1e-7
    return float(s.sum() / s.max()), float(np.exp(-(p * np.log(p)).sum()))


def event_scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} read back from the TensorBoard event files in ``directory``."""
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = accumulator.EventAccumulator(str(directory), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_monitor_in_a_plain_training_loop_logs_current_weights(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    torch.manual_seed(0)
    model = TwoTower()
    writer = SummaryWriter(tmp_path / "tb")
    weights_seen = {}  # the tables at each logged step, copied by a callable log
    monitor = CollapseMonitor(model, every_n_steps=5, log=writer)
    copier = CollapseMonitor(model, every_n_steps=5, log=lambda r: weights_seen.setdefault(r["step"], clone(model)))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    for step in range(20):
        ids = torch.stack([torch.randint(0, 40, (64,), generator=g), torch.randint(0, 60, (64,), generator=g)], 1)
        labels = (ids[:, 0] % 2 == ids[:, 1] % 2).float()
        loss = nn.functional.binary_cross_entropy_with_logits(model(ids), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        monitor.step(step)
        copier.step(step)
    writer.close()

    assert [r["step"] for r in monitor.history] == [0, 5, 10, 15]
    for record in monitor.history:
        for name in VOCAB:
            expected = numpy_ia_rankme(weights_seen[record["step"]][name])
            got = record["fields"][name]
            assert (got["ia"], got["rankme"]) == pytest.approx(expected, rel=1e-6)
            assert got["rows"] == VOCAB[name]
        assert record["min_ia"] == min(f["ia"] for f in record["fields"].values())
    assert monitor.history[0]["fields"]["user"]["ia"] != monitor.history[-1]["fields"]["user"]["ia"]

    scalars = event_scalars(tmp_path / "tb")
    assert {"ia/user", "ia/item", "rankme/user", "rankme/item", "collapse/mean_ia", "collapse/min_ia"} <= set(scalars)
    assert [step for step, _ in scalars["ia/item"]] == [0, 5, 10, 15]
    logged = [value for _, value in scalars["ia/item"]]
    assert logged == pytest.approx([r["fields"]["item"]["ia"] for r in monitor.history], rel=1e-6)  # float32 events


def clone(model: TwoTower) -> dict[str, np.ndarray]:
    return {name: e.weight.detach().numpy().copy() for name, e in model.embedding_dict.items()}


def test_jsonl_log_appends_one_line_per_record(tmp_path: Path) -> None:
    model = TwoTower()
    with CollapseMonitor(model, every_n_steps=2, log=tmp_path / "collapse.jsonl") as monitor:
        for step in range(5):
            monitor.step(step)
    lines = [json.loads(line) for line in (tmp_path / "collapse.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 2, 4]
    assert lines == json.loads(json.dumps(monitor.history))


def test_monitor_splits_a_concatenated_table_and_refuses_bad_arguments() -> None:
    model = nn.Module()
    model.embedding = nn.Module()
    model.embedding.embedding = nn.Embedding(30, DIM)  # torchfm's FeaturesEmbedding
    monitor = CollapseMonitor(model, every_n_steps=1, field_dims=[10, 20])
    record = monitor.step(0)
    weight = model.embedding.embedding.weight.detach().numpy()
    assert record["fields"]["field1"]["ia"] == pytest.approx(numpy_ia_rankme(weight[10:])[0], rel=1e-6)
    with pytest.raises(ValueError, match="every_n_steps"):
        CollapseMonitor(model, every_n_steps=0)
    with pytest.raises(TypeError, match="log must be"):
        CollapseMonitor(model, log=3)
    with pytest.raises(UserError, match="no embedding table"):
        CollapseMonitor(nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)))


def test_lightning_callback_steps_with_the_trainers_global_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning is not a dependency: a stand-in ``lightning.pytorch.Callback`` checks the wiring."""
    base = type("Callback", (), {})
    package = types.ModuleType("lightning")
    package.pytorch = types.ModuleType("lightning.pytorch")
    package.pytorch.Callback = base
    monkeypatch.setitem(sys.modules, "lightning", package)
    monkeypatch.setitem(sys.modules, "lightning.pytorch", package.pytorch)
    monitor = CollapseMonitor(TwoTower(), every_n_steps=10)
    callback = monitor.lightning_callback()
    assert isinstance(callback, base)
    for global_step in (9, 10, 10, 11, 20):  # accumulate_grad_batches repeats a global step
        callback.on_train_batch_end(types.SimpleNamespace(global_step=global_step), None, None, None, 0)
    assert [r["step"] for r in monitor.history] == [10, 20]


def test_unwritable_tensorboard_directory_is_one_line(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(UserError, match="taken: cannot write TensorBoard logs there"):
        TrainingBoard(tmp_path / "taken", ["a"])


def test_missing_tensorboard_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(UserError, match=r"need the tensorboard package: pip install 'dcollapse\[tensorboard\]'"):
        TrainingBoard(tmp_path / "tb", ["a"])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny(tmp_path_factory)


def test_train_tensorboard_writes_every_epoch(tiny: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    import dcollapse.train as training

    config = {"model": "fm", "arch": "parallel", "emb_dim": 4, "dnn": [8], "batch_size": 256, "epochs": 2}
    result = training.train(tiny, config, tmp_path / "run.pt", tensorboard=tmp_path / "tb")
    scalars = event_scalars(tmp_path / "tb")
    history = result["history"]
    assert [step for step, _ in scalars["train/loss"]] == [1, 2]
    for tag, key in (("train/loss", "train_loss"), ("valid/auc", "valid_auc"), ("collapse/rankme", "rankme")):
        assert [v for _, v in scalars[tag]] == pytest.approx([e[key] for e in history], rel=1e-6)
    assert [v for _, v in scalars["collapse/min_ia"]] == pytest.approx([min(e["field_ia"]) for e in history], rel=1e-6)
    names = [f["name"] for f in result["meta"]["fields"]]
    assert [v for _, v in scalars[f"ia/{names[2]}"]] == pytest.approx([e["field_ia"][2] for e in history], rel=1e-6)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"histograms": 0})
    events.Reload()
    (last := events.Histograms("spectrum/log10_normalized")[-1])
    assert last.step == 2 and last.histogram_value.max == pytest.approx(0.0, abs=1e-9)  # log10(s_1 / s_1)
    assert last.histogram_value.num == 4 * 4  # F * d singular values of Z


def test_cli_train_tensorboard_option(tiny: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from dcollapse.cli.app import app

    args = ["train", str(tiny), "--model", "fm", "--emb-dim", "4", "--epochs", "1", "--out", str(tmp_path / "r.pt")]
    result = CliRunner().invoke(app, [*args, "--tensorboard", str(tmp_path / "tb")])
    assert result.exit_code == 0, result.output
    assert [step for step, _ in event_scalars(tmp_path / "tb")["valid/logloss"]] == [1]
