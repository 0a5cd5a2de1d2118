"""The report layer as a library: the verdict rules on planted spectra, the run flags, the one base-run rule, the
public API (``dcollapse.analyze`` on checkpoints, state_dicts and tensors) and its documented worked example."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from _report_fixtures import make_dataset, make_run
from typer.testing import CliRunner

import dcollapse
from dcollapse.cli.app import app
from dcollapse.errors import UserError
from dcollapse.reports import verdict
from dcollapse.reports.runs import RunKey, base_index


def numpy_ia(matrix: np.ndarray) -> float:
    s = np.linalg.svd(matrix.astype(np.float64), compute_uv=False)
    return float(s.sum() / s.max())


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("library")
    data = make_dataset(root / "data")
    deepfm = make_run(data, root / "deepfm.pt", arch="parallel")
    return {"data": data, "fm": make_run(data, root / "fm.pt"), "deepfm": deepfm}


# ------------------------------------------------------------------------------------------------ verdict rules


def test_untrained_reference_is_a_gaussian_tables_ia():
    ref = verdict.untrained_reference(500, 16)
    g = np.random.default_rng(1).standard_normal((500, 16))
    assert ref.ia == pytest.approx(numpy_ia(g), rel=0.03)  # another draw of the same shape
    assert verdict.untrained_reference(20, 16).ia < ref.ia  # fewer rows: a less flat spectrum


@pytest.mark.parametrize(
    ("rank", "state"), [(1, "collapsed"), (3, "collapsed"), (16, "not collapsed")]
)  # fmt: skip
def test_planted_low_rank_fields_are_called_collapsed(rank, state):
    rng = np.random.default_rng(0)
    table = rng.standard_normal((400, rank)) @ rng.standard_normal((rank, 16))
    assert verdict.field_state(numpy_ia(table), 400, 16) == state


def test_tiny_fields_are_not_judged():
    assert verdict.field_state(1.0, 3, 16) == "not judged"


def test_base_rate_logloss_is_the_entropy_of_the_positive_rate():
    assert verdict.base_rate_logloss(25, 100) == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    assert verdict.base_rate_logloss(0, 100) is None


def _ckpt(history: list[dict], test_logloss: float, positives: int = 10, rows: int = 100) -> dict:
    best = max(history, key=lambda h: h["valid_auc"])["epoch"]
    return {"history": history, "best_epoch": best, "test": {"auc": 0.6, "logloss": test_logloss},
            "meta": {"splits": {"train": {"rows": rows, "positives": positives}}}}  # fmt: skip


def test_run_flags():
    early = _ckpt([{"epoch": 1, "valid_auc": 0.51}, {"epoch": 2, "valid_auc": 0.50}, {"epoch": 3, "valid_auc": 0.49}],
                  test_logloss=0.9)  # fmt: skip
    flags = {f["flag"] for f in verdict.run_flags(early)}
    assert flags == {"near_chance", "worse_than_base_rate"}  # base rate 0.1: logloss 0.325
    improving = _ckpt([{"epoch": 1, "valid_auc": 0.70}, {"epoch": 2, "valid_auc": 0.75}], test_logloss=0.2)
    assert [f["flag"] for f in verdict.run_flags(improving)] == ["still_improving"]
    fine = _ckpt([{"epoch": 1, "valid_auc": 0.7}, {"epoch": 2, "valid_auc": 0.8}, {"epoch": 3, "valid_auc": 0.79}],
                 test_logloss=0.2)  # fmt: skip
    assert verdict.run_flags(fine) == []


@pytest.mark.parametrize(
    ("rankme", "auc", "words"),
    [(0.42, 0.004, "raises RankMe and raises AUC"), (0.42, 0.0, "raises RankMe at no AUC cost"),
     (-0.2, -0.01, "lowers RankMe at an AUC cost of 0.0100"), (0.01, 0.0, "leaves RankMe unchanged")],
)  # fmt: skip
def test_change_line(rankme, auc, words):
    line = verdict.change_line("x.pt", rankme, auc, "test")
    assert words in line and f"{rankme:+.0%}" in line and "(test)" in line


def test_one_base_rule_prefers_same_width_then_same_seed():
    keys = [RunKey("fm", "none", "A", 8, 0), RunKey("fm", "none", "A", 16, 1), RunKey("fm", "none", "A", 8, 1),
            RunKey("dot", "none", "A", 8, 1), RunKey("fm", "none", "B", 8, 1)]  # fmt: skip
    assert base_index(RunKey("fm", "parallel", "A", 8, 1), keys) == 2
    assert base_index(RunKey("fm", "parallel", "A", 16, 0), keys) == 1
    assert base_index(RunKey("fm", "stacked", "C", 8, 0), keys) is None
    assert base_index(keys[0], keys) is None  # a base has no base


# ------------------------------------------------------------------------------------------------ the Python API


def test_analyze_a_checkpoint_matches_numpy_and_the_cli(trained):
    report = dcollapse.analyze(trained["deepfm"])
    ckpt = torch.load(trained["deepfm"], weights_only=True)
    table = ckpt["state_dict"]["embedding.table"].numpy()
    offsets = [f["offset"] for f in ckpt["meta"]["fields"]] + [table.shape[0]]
    expected = [numpy_ia(table[lo:hi]) for lo, hi in zip(offsets[:-1], offsets[1:], strict=True)]
    assert [f["ia"] for f in report.fields] == pytest.approx(expected, rel=1e-6)
    assert report.batch is not None and report.verdict["lines"]
    frame = report.to_polars()
    assert frame.columns[:3] == ["table", "field", "vocab_size"] and frame.height == len(expected)
    doc = report.to_dict()
    assert doc["schema"] == "dcollapse.spectrum/2"
    cli = json.loads(CliRunner().invoke(app, ["spectrum", str(trained["deepfm"]), "--json"]).stdout)
    assert [f["ia"] for f in cli["fields"]] == pytest.approx([f["ia"] for f in doc["fields"]])
    assert cli["verdict"] == doc["verdict"]


def test_analyze_live_objects_and_plots(trained, tmp_path):
    rng = np.random.default_rng(0)
    low = torch.tensor(rng.standard_normal((300, 2)) @ rng.standard_normal((2, 16)), dtype=torch.float32)
    report = dcollapse.analyze(low)
    assert report.fields[0]["ia"] == pytest.approx(numpy_ia(low.numpy()), rel=1e-6)
    assert report.fields[0]["state"] == "collapsed" and report.verdict["collapsed_fields"] == 1
    module = torch.nn.Module()
    module.user_emb = torch.nn.Embedding(50, 8)
    assert dcollapse.analyze(module).fields[0]["vocab_size"] == 50
    figure = report.plot()
    assert figure.axes  # a Figure for notebooks, nothing written
    from matplotlib.figure import Figure

    canvas = Figure()
    ax = canvas.subplots()
    assert report.plot(ax) is canvas and ax.get_lines()  # drawn on the caller's Axes
    path = report.plot(tmp_path / "spectrum.pdf")
    assert (tmp_path / "spectrum.pdf").read_bytes()[:4] == b"%PDF" and path is not None


def test_metric_functions_on_matrices():
    rng = np.random.default_rng(3)
    z = rng.standard_normal((200, 12))
    s = np.linalg.svd(z, compute_uv=False)
    p = s / s.sum() + 1e-7
    assert dcollapse.rankme(z) == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-9)
    assert dcollapse.information_abundance(z) == pytest.approx(s.sum() / s.max(), rel=1e-9)
    assert dcollapse.singular_spectrum(z).numpy() == pytest.approx(s, rel=1e-9)
    fields = dcollapse.field_spectra(z, [0, 50], ["a", "b"])
    assert [f.field for f in fields] == ["a", "b"]
    assert fields[1].spectrum.ia == pytest.approx(numpy_ia(z[50:]), rel=1e-9)
    with pytest.raises(ValueError):
        dcollapse.rankme(np.ones(3))


@pytest.mark.parametrize(("option", "value"), [("--fail-under-ia", "nan"), ("--fail-field-ia", "inf"),
                                               ("--fail-under-rankme", "-inf")])  # fmt: skip
def test_gates_refuse_bounds_that_are_not_finite_numbers(trained, option, value):
    """A NaN bound would pass every gate: refused, one line naming the option, exit 2 (before any work)."""
    result = CliRunner().invoke(app, ["spectrum", str(trained["fm"]), option, value])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and option in lines[0], result.output
    with pytest.raises(UserError, match="--fail-under-ia"):
        dcollapse.reports.Gates(under_ia=float("nan"))


def test_history_snapshot_batch_is_the_reports_batch(tmp_path):
    """Training's per-epoch RankMe is measured on the rows the report draws, when the split is larger than it."""
    from dcollapse.reports import load_fixed_batch, load_run
    from dcollapse.reports.runs import batch_matrix
    from dcollapse.train import train

    data = make_dataset(tmp_path / "data", rows=3000)
    config = {"model": "fm", "arch": "none", "emb_dim": 4, "epochs": 1, "batch_size": 256, "snapshot_rows": 100}
    ckpt = train(data, config, tmp_path / "run.pt")
    run = load_run(tmp_path / "run.pt")
    z = batch_matrix(run, load_fixed_batch(data, "valid", 100).ids)
    assert dcollapse.rankme(z) == pytest.approx(ckpt["history"][-1]["rankme"], rel=1e-6)
    other = batch_matrix(run, load_fixed_batch(data, "valid", 100, seed=1).ids)
    assert dcollapse.rankme(z) != pytest.approx(dcollapse.rankme(other), rel=1e-6)  # the rows matter


@pytest.mark.slow
def test_api_doc_example_runs(trained, tmp_path, monkeypatch):
    """Every ```python block of docs/api.md runs (with its paths pointing at freshly trained files)."""
    doc = Path(__file__).resolve().parents[1] / "docs" / "api.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for name in ("fm", "deepfm"):
        (tmp_path / "runs" / f"{name}.pt").write_bytes(trained[name].read_bytes())
    for block in blocks:
        exec(compile(block, str(doc), "exec"), {})


@pytest.mark.slow
def test_a_dataset_made_with_apply_is_not_warned_about_its_input_hash(tmp_path):
    """`preprocess --apply` makes new rows with the training dataset's vocabularies: no hash warning for it, one
    for a dataset whose vocabularies were counted on other input."""
    from dcollapse.reports.runs import check_dataset

    runner = CliRunner()

    def cli(*args):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        return result

    for seed in (0, 1):
        cli("synth", "ctr", "--out", tmp_path / f"raw{seed}.csv", "--rows", 3000, "--fields", 4, "--seed", seed)
    cli("preprocess", tmp_path / "raw0.csv", "--format", "csv", "--label", "label", "--out", tmp_path / "a")
    cli("preprocess", tmp_path / "raw1.csv", "--apply", tmp_path / "a", "--out", tmp_path / "b")
    cli("train", tmp_path / "a", "--model", "fm", "--epochs", "1", "--emb-dim", "4", "--out", tmp_path / "run.pt")
    for command in (["eval", tmp_path / "run.pt", "--data", tmp_path / "b"], ["spectrum", tmp_path / "run.pt",
                    "--data", tmp_path / "b", "--split", "test"]):  # fmt: skip
        assert "input hash differs" not in cli(*command).output
    ckpt = torch.load(tmp_path / "run.pt", weights_only=True)
    ckpt["data"]["hash"] = "another-input"
    assert check_dataset(tmp_path / "b", ckpt, "run.pt") == [
        f"{tmp_path / 'b'}: input hash differs from the one run.pt was trained on"
    ]


# ------------------------------------------------------------------------------------------------ foreign models


def test_spectrum_and_compare_read_other_libraries_models(trained, tmp_path):
    """A DeepCTR-Torch-style state_dict whose tables match the dataset's fields by name: per-field report, the batch
    view through --data, compare beside a dcollapse run; a concatenated table split by --field-dims."""
    from dcollapse.data.dataset import load_meta

    meta = load_meta(trained["data"])
    rng = np.random.default_rng(0)
    state = {f"embedding_dict.{f['name']}.weight": torch.tensor(rng.standard_normal((f["vocab_size"], 6)),
             dtype=torch.float32) for f in meta["fields"]}  # fmt: skip
    state["linear_model.embedding_dict.f1.weight"] = torch.zeros(meta["fields"][0]["vocab_size"], 1)
    torch.save(state, tmp_path / "deepctr.pt")
    runner = CliRunner()
    doc = json.loads(runner.invoke(app, ["spectrum", str(tmp_path / "deepctr.pt"), "--json"]).stdout)
    assert doc["source"]["layout"] == "deepctr" and doc["model"] is None and doc["batch"] is None
    assert [f["field"] for f in doc["fields"]] == [f["name"] for f in meta["fields"]]
    first = state[f"embedding_dict.{meta['fields'][0]['name']}.weight"].numpy()
    assert doc["fields"][0]["ia"] == pytest.approx(numpy_ia(first), rel=1e-6)
    with_data = runner.invoke(app, ["spectrum", str(tmp_path / "deepctr.pt"), "--data", str(trained["data"]),
                                    "--json"])  # fmt: skip
    batch = json.loads(with_data.stdout)["batch"]
    from dcollapse.reports import load_fixed_batch

    ids = load_fixed_batch(trained["data"]).ids.numpy()
    z = np.concatenate([state[f"embedding_dict.{f['name']}.weight"].numpy()[ids[:, i]]
                        for i, f in enumerate(meta["fields"])], axis=1)  # fmt: skip
    s = np.linalg.svd(z.astype(np.float64), compute_uv=False)
    p = s / s.sum() + 1e-7
    assert batch["z"]["rankme"] == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-6)

    mixed = json.loads(runner.invoke(app, ["compare", str(trained["fm"]), str(tmp_path / "deepctr.pt"),
                                           "--json"]).stdout)  # fmt: skip
    foreign = next(r for r in mixed["runs"] if r["layout"] == "deepctr")
    assert foreign["auc"] is None and foreign["base"] is None and foreign["mean_field_ia"] > 0
    table = runner.invoke(app, ["compare", str(trained["fm"]), str(tmp_path / "deepctr.pt")])
    assert table.exit_code == 0 and "deepctr tables" in table.stdout

    concatenated = torch.tensor(rng.standard_normal((30, 4)), dtype=torch.float32)
    torch.save({"embedding.embedding.weight": concatenated}, tmp_path / "torchfm.pt")
    split = json.loads(runner.invoke(app, ["spectrum", str(tmp_path / "torchfm.pt"), "--field-dims", "10,20",
                                           "--json"]).stdout)  # fmt: skip
    assert [f["vocab_size"] for f in split["fields"]] == [10, 20]
    assert split["fields"][1]["ia"] == pytest.approx(numpy_ia(concatenated.numpy()[10:]), rel=1e-6)
    listing = json.loads(runner.invoke(app, ["spectrum", str(tmp_path / "deepctr.pt"), "--list-tables",
                                             "--json"]).stdout)  # fmt: skip
    skipped = next(c for c in listing["candidates"] if c["key"].startswith("linear_model"))
    assert listing["schema"] == "dcollapse.tables/1" and not skipped["chosen"] and skipped["reason"]
    bad = runner.invoke(app, ["spectrum", str(tmp_path / "torchfm.pt"), "--field-dims", "10,x"])
    assert bad.exit_code == 2 and "--field-dims" in bad.output


def test_the_change_over_training_and_at_matched_auc():
    from dcollapse.reports.compare import over_training

    def history(points):
        return [{"epoch": e, "valid_auc": a, "rankme": r} for e, (a, r) in enumerate(points, start=1)]

    base = history([(0.60, 10.0), (0.70, 10.0), (0.72, 8.0)])
    run = history([(0.65, 20.0), (0.71, 10.2), (0.74, 4.0), (0.75, 3.0)])
    over = over_training(run, base)
    assert over["epochs"] == [1, 2, 3] and over["signs"] == "+=-"
    assert over["changes"] == pytest.approx([1.0, 0.02, -0.5])
    # both reached 0.72: the run first at epoch 3 (RankMe 4), the base at epoch 3 (RankMe 8)
    assert over["matched_auc"] == {"auc": 0.72, "epoch": 3, "base_epoch": 3, "change": pytest.approx(-0.5)}
    assert over_training(run, []) is None
    line = verdict.change_line("x.pt", 0.3, 0.01, "test") + verdict.training_clause(over)
    assert line.endswith("; per epoch +=-, at matched valid AUC 0.7200: -50%")
