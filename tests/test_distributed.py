"""Data-parallel training: 2 gloo ranks on CPU give the 1-process run; a failing rank stops the run cleanly."""

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure
from typer.testing import CliRunner

import dcollapse.train as training
from dcollapse import checkpoint
from dcollapse.cli.app import app
from dcollapse.data.dataset import load_meta
from dcollapse.data.synth import write_ctr_dataset
from dcollapse.distributed import RanksFailed, failure_message, launch, record_failure, root_cause

runner = CliRunner()
# 2400 train rows: 9 batches of 255 (odd: the ranks get 128 and 127 rows) and a last batch of 105 (53 and 52)
CONFIG = {"model": "fm", "arch": "parallel", "emb_dim": 4, "dnn": [16, 8], "batch_size": 255, "lr": 0.01}
CONFIG |= {"epochs": 3, "patience": 0}
FLAGS = ["--model", "fm", "--arch", "parallel", "--emb-dim", "4", "--dnn", "16,8", "--batch-size", "255"]
FLAGS += ["--lr", "0.01", "--epochs", "3", "--patience", "0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("synth") / "d"
    write_ctr_dataset(directory, 3000, 5, 0)
    assert load_meta(directory)["splits"]["train"]["rows"] == 2400  # the uneven shards above
    return directory


@pytest.fixture(scope="module")
def one_process(data, tmp_path_factory) -> dict:
    return training.train(data, CONFIG, tmp_path_factory.mktemp("one") / "run.pt")


def assert_same_run(a: dict, b: dict) -> None:
    """Same weights (last and best), losses, AUCs and best epoch, up to float32 summation order."""
    for state in (lambda run: run["state_dict"], lambda run: run["resume"]["state_dict"]):  # best, last
        for name, value in state(a).items():
            torch.testing.assert_close(state(b)[name], value, rtol=1e-4, atol=1e-6)
    for x, y in zip(a["history"], b["history"], strict=True):
        assert math.isclose(x["train_loss"], y["train_loss"], rel_tol=1e-5)
        assert math.isclose(x["valid_auc"], y["valid_auc"], abs_tol=1e-4)
        assert math.isclose(x["rankme"], y["rankme"], rel_tol=1e-4)
    assert a["best_epoch"] == b["best_epoch"]


@pytest.mark.slow
def test_two_gloo_ranks_train_the_one_process_run(data, one_process, tmp_path):
    out = tmp_path / "run.pt"
    result = runner.invoke(app, ["train", str(data), "--out", str(out), *FLAGS, "--nproc", "2"])
    assert result.exit_code == 0, result.output
    two = checkpoint.load(out)
    assert two["config"] == one_process["config"]
    assert_same_run(one_process, two)
    assert math.isclose(two["test"]["auc"], one_process["test"]["auc"], abs_tol=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.pt"]  # rank 0 alone wrote, no temp files left


@pytest.mark.slow
def test_failing_rank_stops_the_run_keeps_the_last_checkpoint_and_resumes_on_one_process(data, one_process, tmp_path):
    out = tmp_path / "run.pt"
    script = Path(__file__).with_name("_failing_rank.py")
    with pytest.raises(RanksFailed, match=r"rank 1 of 2 failed \(exit code 1\): RuntimeError: simulated failure") as e:
        launch(2, [sys.executable, str(script), "train", str(data), "--out", str(out), *FLAGS])
    assert e.value.exitcode == 1
    kept = checkpoint.load(out)
    assert [h["epoch"] for h in kept["history"]] == [1, 2]
    for x, y in zip(one_process["history"][:2], kept["history"], strict=True):
        assert math.isclose(x["valid_auc"], y["valid_auc"], abs_tol=1e-4)
    resumed = training.train(data, kept["config"], out, resume=kept)
    assert_same_run(one_process, resumed)


def test_nproc_under_torchrun_is_a_usage_error(data, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = runner.invoke(app, ["train", str(data), "--out", str(tmp_path / "x.pt"), "--nproc", "2"])
    assert result.exit_code == 2 and "torchrun" in result.output


def test_root_cause_is_the_first_recorded_failure_not_a_rank_that_lost_its_peers(tmp_path, monkeypatch):
    files = {rank: tmp_path / f"error{rank}.json" for rank in range(4)}
    errors = [(1, RuntimeError("disk full")), (0, RuntimeError("Connection closed by peer")),
              (3, dist.DistBackendError("lost peer"))]  # fmt: skip
    for rank, error in errors:  # in this order, within the same second
        monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(files[rank]))
        record_failure(error)
    assert not files[3].exists()  # torch's communication errors are not recorded
    failures = {rank: ProcessFailure(rank, 100 + rank, 1, str(files[rank])) for rank in (0, 1, 3)}
    failures[2] = ProcessFailure(2, 102, -15, str(files[2]))
    rank, failure = root_cause(failures)
    assert rank == 1 and failure_message(failure) == "RuntimeError: disk full"
    assert failure_message(failures[2]) == "killed by signal SIGTERM"
