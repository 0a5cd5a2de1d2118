"""--compile: the training step compiles once (one static batch shape), the partial batches run eagerly, and the
run trains what the eager run trains."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch._dynamo
from _ctr_fixtures import write_dataset
from torch._dynamo.utils import counters

import dcollapse.train as training


@pytest.fixture(scope="module")
def uneven(tmp_path_factory) -> Path:
    """1500 train rows: batches of 512 leave a partial last batch of 476 rows every epoch."""
    directory = tmp_path_factory.mktemp("uneven")
    write_dataset(directory, [6, 5, 4, 7], {"train": 1500, "valid": 500, "test": 500})
    return directory


def test_one_shape_sends_only_the_first_batch_length_to_the_compiled_step(monkeypatch):
    calls: list[tuple[str, int]] = []

    class Recorder(torch.nn.Module):
        def __init__(self, name: str, module: torch.nn.Module) -> None:
            super().__init__()
            self.name, self.module = name, module

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            calls.append((self.name, len(ids)))
            return self.module(ids)

    monkeypatch.setattr(torch, "compile", lambda module, dynamic: Recorder(f"compiled dynamic={dynamic}", module))
    step = training.OneShape(Recorder("eager", torch.nn.Identity()))
    for rows in (8, 8, 3, 8, 5):
        assert torch.equal(step(torch.arange(rows)), torch.arange(rows))
    compiled = "compiled dynamic=False"
    assert [c for c in calls if c[0] != "eager"] == [(compiled, 8)] * 3
    assert [rows for name, rows in calls if name == "eager"] == [8, 8, 3, 8, 5]  # the compiled one wraps eager


@pytest.mark.slow
def test_compiled_run_with_a_partial_batch_compiles_once_and_trains_like_eager(uneven, tmp_path):
    """Two epochs of 3 batches (512, 512, 476): no frame of the step is compiled twice (error_on_recompile makes a
    second compilation raise, as the 476-row batch did under a plain torch.compile), and the losses, AUCs and
    weights are the eager run's to float tolerance (Inductor's fused loops round differently)."""
    config = {"model": "fm", "arch": "parallel", "dnn": [8], "emb_dim": 4, "epochs": 2, "patience": 0,
              "batch_size": 512, "device": "cpu"}  # fmt: skip
    eager = training.train(uneven, config, tmp_path / "eager.pt")
    torch._dynamo.reset()  # no cached frame of another test's model
    counters.clear()
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = training.train(uneven, {**config, "compile": True}, tmp_path / "compiled.pt")
    assert counters["stats"]["unique_graphs"] >= 1  # it did compile
    assert compiled["config"]["compile"] is True
    for a, b in zip(eager["history"], compiled["history"], strict=True):
        assert math.isclose(a["train_loss"], b["train_loss"], rel_tol=1e-5)
        assert math.isclose(a["valid_auc"], b["valid_auc"], rel_tol=1e-5)
    for key, value in eager["state_dict"].items():
        torch.testing.assert_close(compiled["state_dict"][key], value, rtol=1e-4, atol=1e-6)
