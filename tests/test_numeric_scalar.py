"""``preprocess --numeric-as scalar``: numeric fields as one learned vector per field times the value.

The ids and the meta.json scaling against a float64 numpy computation of the rule, the scaling taken from the
train split only (and from the dataset with --apply), the refusals, the model's embeddings, logits and gradients
(dense, --sparse-emb, --fused-update) against closed forms, and train + spectrum end to end."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from _ctr_fixtures import make_meta
from _data_fixtures import criteo_row, write_lines
from typer.testing import CliRunner

from dcollapse.cli.app import app
from dcollapse.data.dataset import check_meta, load_split
from dcollapse.diagnostics.field_players import field_inputs
from dcollapse.errors import UserError
from dcollapse.models.embedding import FusedTableOptimizer
from dcollapse.models.model import build_model
from dcollapse.reports import verdict

runner = CliRunner()
LEVELS = 1000
READING = "scalar field (one vector x value): rank 1 by construction, not read"


def invoke(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args])


def criteo_lines(rows: int, seed: int, high: int = 400) -> list[str]:
    """Criteo lines whose integer columns hold missing values, negatives, zeros and values up to ``high``."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(rows):
        ints = [("" if rng.random() < 0.2 else str(int(rng.integers(-3, high)))) for _ in range(13)]
        cats = [f"c{int(rng.integers(0, 4))}" for _ in range(26)]
        lines.append(criteo_row(str(int(rng.integers(0, 2))), ints, cats))
    return lines


def numeric_columns(lines: list[str]) -> np.ndarray:
    """float64 [rows, 13] of the integer columns, NaN where missing."""
    cells = [line.split("\t")[1:14] for line in lines]
    return np.array([[float(c) if c else np.nan for c in row] for row in cells])


def reference_ids(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """The documented rule in numpy: 2 + floor(clip((log1p(max(v, 0)) - min) / (max - min), 0, 1) * L + 0.5),
    missing -> 1."""
    x = np.log1p(np.maximum(np.nan_to_num(values, nan=0.0), 0.0))
    scaled = np.clip((x - low) / (high - low), 0.0, 1.0) if high > low else np.zeros_like(x)
    return np.where(np.isnan(values), 1, 2 + np.floor(scaled * LEVELS + 0.5)).astype(np.int64)


@pytest.fixture(scope="module")
def criteo(tmp_path_factory) -> dict[str, Path]:
    """A scalar Criteo dataset from three split files; valid and test reach beyond the train range."""
    root = tmp_path_factory.mktemp("scalar")
    files = {
        "train": write_lines(root / "train.txt", criteo_lines(300, 0, high=200)),
        "valid": write_lines(root / "valid.txt", criteo_lines(60, 1, high=2000)),
        "test": write_lines(root / "test.txt", criteo_lines(60, 2, high=2000)),
    }
    out = root / "data"
    result = invoke("preprocess", *files.values(), "--format", "criteo", "--split-files", "--numeric-as", "scalar",
                    "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    return {**files, "data": out, "root": root}


def test_ids_and_scaling_follow_the_rule_with_the_train_split_only(criteo):
    meta = json.loads((criteo["data"] / "meta.json").read_text())
    train = numeric_columns(criteo["train"].read_text().splitlines())
    for k, field in enumerate(meta["fields"][:13]):
        x = np.log1p(np.maximum(train[:, k][~np.isnan(train[:, k])], 0.0))
        assert field["encoding"] == "scalar" and field["vocab_size"] == LEVELS + 3
        assert field["scalar"] == {"levels": LEVELS, "transform": "log1p", "min": pytest.approx(x.min(), rel=1e-15),
                                   "max": pytest.approx(x.max(), rel=1e-15)}  # fmt: skip
    assert all("encoding" not in f for f in meta["fields"][13:])  # categorical fields as before
    clipped = 0
    for split in ("train", "valid", "test"):
        values = numeric_columns(criteo[split].read_text().splitlines())
        ids = pl.read_parquet(criteo["data"] / f"{split}.parquet").select([f"I{k}" for k in range(1, 14)]).to_numpy()
        for k, field in enumerate(meta["fields"][:13]):
            want = reference_ids(values[:, k], field["scalar"]["min"], field["scalar"]["max"])
            np.testing.assert_array_equal(ids[:, k], want, err_msg=f"{split} {field['name']}")
            clipped += int((ids[:, k] == LEVELS + 2).sum())
        assert (ids[np.isnan(values)] == 1).all()  # missing -> id 1 (value 0)
    assert clipped > 13  # valid/test values beyond the train maximum land on the top level


def test_apply_takes_the_scaling_of_the_training_dataset(criteo, tmp_path):
    new = write_lines(tmp_path / "new.txt", criteo_lines(50, 7, high=5000))
    out = tmp_path / "applied"
    result = invoke("preprocess", new, "--apply", criteo["data"], "--out", out)
    assert result.exit_code == 0, result.output
    trained = json.loads((criteo["data"] / "meta.json").read_text())["fields"]
    applied = json.loads((out / "meta.json").read_text())
    assert applied["fields"] == trained and applied["options"]["numeric_as"] == "scalar"
    values = numeric_columns(new.read_text().splitlines())
    ids = pl.read_parquet(out / "test.parquet").select([f"I{k}" for k in range(1, 14)]).to_numpy()
    for k, field in enumerate(trained[:13]):
        np.testing.assert_array_equal(ids[:, k], reference_ids(values[:, k], field["scalar"]["min"],
                                                               field["scalar"]["max"]))  # fmt: skip


def test_csv_float_columns_become_scalar_fields(tmp_path):
    rows = ["label,price,city"] + [f"{i % 2},{v},c{i % 3}" for i, v in enumerate([0.5, 3.25, "", 10.0, -1.0, 7.5] * 5)]
    src = write_lines(tmp_path / "t.csv", rows)
    out = tmp_path / "d"
    result = invoke("preprocess", src, "--numeric-as", "scalar", "--valid-frac", "0", "--test-frac", "0", "--out", out)
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "meta.json").read_text())
    price = next(f for f in meta["fields"] if f["name"] == "price")
    assert price["encoding"] == "scalar" and price["scalar"]["min"] == 0.0
    assert price["scalar"]["max"] == pytest.approx(np.log1p(10.0), rel=1e-15)
    city = next(f for f in meta["fields"] if f["name"] == "city")
    assert "encoding" not in city
    values = np.array([0.5, 3.25, np.nan, 10.0, -1.0, 7.5] * 5)
    ids = pl.read_parquet(out / "train.parquet")["price"].to_numpy()
    np.testing.assert_array_equal(ids, reference_ids(values, 0.0, float(np.log1p(10.0))))


@pytest.mark.parametrize(
    ("fmt", "lines", "extra", "message"),
    [
        ("avazu", ["id,click,hour,C1", "1,0,14102100,a"], [], "--numeric-as scalar: --format avazu input has no"),
        ("libfm", ["1 1:1 2:1", "0 1:1 3:1"], [], "--numeric-as scalar: --format libfm input has no numeric field"),
        ("csv", ["label,a", "1,x", "0,y"], [], "input has no numeric field (csv/parquet: name them with --numeric)"),
        ("criteo", None, ["--numeric-bins", "4"], "--numeric-bins is for --numeric-as bins"),
    ],
)
def test_scalar_is_refused_where_it_makes_no_sense(tmp_path, fmt, lines, extra, message):
    src = write_lines(tmp_path / "in.txt", lines or criteo_lines(5, 0))
    result = invoke("preprocess", src, "--format", fmt, "--numeric-as", "scalar", *extra, "--out", tmp_path / "o")
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_unknown_encoding_and_a_scalar_apply_onto_bins_are_refused(tmp_path):
    src = write_lines(tmp_path / "in.txt", criteo_lines(30, 0))
    bad = invoke("preprocess", src, "--numeric-as", "log", "--out", tmp_path / "o")
    assert bad.exit_code == 2 and "--numeric-as must be 'bins' or 'scalar' (got 'log')" in bad.stderr
    assert invoke("preprocess", src, "--format", "criteo", "--out", tmp_path / "bins").exit_code == 0
    onto = invoke("preprocess", src, "--apply", tmp_path / "bins", "--numeric-as", "scalar", "--out", tmp_path / "o")
    assert onto.exit_code == 2 and "--numeric-as scalar differs from the dataset in --apply" in onto.stderr
    assert len(onto.stderr.strip().splitlines()) == 1


def scalar_meta(vocab: list[int], scalar: list[int], low: float = 0.0, high: float = 2.0) -> dict:
    """make_meta's dataset with the fields ``scalar`` numeric with encoding scalar (vocab LEVELS + 3)."""
    sizes = [LEVELS + 3 if f in scalar else v for f, v in enumerate(vocab)]
    meta = make_meta(sizes, {"train": 1})
    for f in scalar:
        meta["fields"][f] |= {"kind": "numeric", "encoding": "scalar",
                              "scalar": {"levels": LEVELS, "transform": "log1p", "min": low, "max": high}}  # fmt: skip
    return meta


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.pop("scalar"), "encoding 'scalar' needs a 'scalar' object"),
        (lambda f: f["scalar"].update(levels=0), "scalar.levels must be an integer >= 1, got 0"),
        (lambda f: f["scalar"].update(levels=True), "scalar.levels must be an integer >= 1, got True"),
        (lambda f: f["scalar"].update(transform="log"), "scalar.transform must be one of log1p, got 'log'"),
        (lambda f: f["scalar"].update(min=3.0), "scalar.min and scalar.max must be finite numbers with min <= max"),
        (lambda f: f["scalar"].update(max=float("nan")), "must be finite numbers"),
        (lambda f: f["scalar"].update(min="0"), "must be finite numbers"),
        (lambda f: f.update(kind="categorical"), "encoding 'scalar' is for numeric fields, this one is categorical"),
        (lambda f: f.update(encoding="hash"), "encoding must be one of bins, scalar, got 'hash'"),
        (lambda f: f.update(encoding="bins"), "a 'scalar' block needs encoding 'scalar'"),
    ],
)
def test_check_meta_refuses_a_bad_scalar_block(change, message):
    meta = scalar_meta([5, 7], [1])
    check_meta(copy.deepcopy(meta), "meta.json")  # the good one passes
    change(meta["fields"][1])
    with pytest.raises(UserError, match="meta.json: fields\\[1\\] \\(f1\\): ") as info:
        check_meta(meta, "meta.json")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_vocab_size_must_match_the_levels():
    meta = scalar_meta([5, 7], [1])
    meta["fields"][1]["scalar"]["levels"] = 10  # vocab_size stays 1003
    with pytest.raises(UserError, match=r"vocab_size must be scalar.levels \+ 3 = 13, got 1003"):
        check_meta(meta, "meta.json")


def test_a_bad_scalar_block_on_disk_is_one_line_exit_2(criteo, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for p in criteo["data"].iterdir():
        (broken / p.name).write_bytes(p.read_bytes())
    meta = json.loads((broken / "meta.json").read_text())
    meta["fields"][0]["scalar"]["transform"] = "sqrt"
    (broken / "meta.json").write_text(json.dumps(meta))
    result = invoke("train", broken, "--epochs", "1", "--out", tmp_path / "m.pt")
    assert result.exit_code == 2 and "scalar.transform must be one of log1p, got 'sqrt'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


# ----------------------------------------------------------------------------------------------------------- model


def values_of(ids: np.ndarray) -> np.ndarray:
    """The value of local ids of a scalar field, independently: 0 for ids 0 and 1, (id - 2) / L otherwise."""
    return np.where(ids < 2, 0.0, (ids - 2) / LEVELS)


def random_ids(meta: dict, batch: int, seed: int) -> torch.Tensor:
    gen = np.random.default_rng(seed)
    ids = np.stack([gen.integers(0, f["vocab_size"], batch) for f in meta["fields"]], axis=1)
    ids[:3, 1] = [0, 1, 2]  # OOV, missing and value 0 of the scalar field
    ids[3, 1] = LEVELS + 2  # value 1
    return torch.from_numpy(ids.astype(np.int32))


def reference_embeddings(table: np.ndarray, meta: dict, ids: np.ndarray) -> np.ndarray:
    """E [B, F, d] in float64: table rows for categorical fields, value * the field's first row for scalar ones."""
    out = []
    for f, field in enumerate(meta["fields"]):
        rows = table[field["offset"] + ids[:, f]]
        if field.get("encoding") == "scalar":
            rows = values_of(ids[:, f])[:, None] * table[field["offset"]][None, :]
        out.append(rows)
    return np.stack(out, axis=1)


@pytest.mark.parametrize("config", [{"model": "fm"}, {"model": "fm", "style": "textbook"},
                                    {"model": "crossnet", "arch": "parallel", "dnn": [8], "init": "xavier"},
                                    {"model": "dot", "arch": "stacked", "dnn": [8], "num_sets": 2}])  # fmt: skip
def test_embeddings_and_field_tables_are_value_times_one_row(config):
    meta = scalar_meta([6, 0, 9, 0], [1, 3])
    torch.manual_seed(0)
    model = build_model({**config, "emb_dim": 4}, meta).double()
    assert not model._fused  # the fused lookup + interaction is skipped with scalar fields
    ids = random_ids(meta, 16, 0)
    table = model.embedding.table.detach().numpy()
    want = reference_embeddings(table, meta, ids.numpy())
    np.testing.assert_allclose(model.embed(ids).detach().numpy(), want, rtol=1e-7, atol=1e-12)
    for f in (1, 3):
        start = meta["fields"][f]["offset"]
        assert not table[start + 1 : start + LEVELS + 3].any()  # the unused rows are zero
        produced = model.embedding.field_table(f).detach().numpy()
        np.testing.assert_allclose(produced, values_of(np.arange(LEVELS + 3))[:, None] * table[start], rtol=1e-7)
        assert np.linalg.matrix_rank(produced, tol=1e-6 * np.abs(produced).max()) == 1
    np.testing.assert_array_equal(model.embedding.field_table(0).detach().numpy(), table[:6])
    if config.get("init") == "xavier":  # FuxiCTR's xavier_normal_ of the numeric Linear(1, d): std sqrt(2 / 5)
        assert np.abs(table[6]).max() > 0.05 > np.abs(table[:6]).max()


def test_textbook_first_order_term_is_weight_times_value():
    """In the logit and in what the interactions analysis masks (its per-field first-order inputs)."""
    meta = scalar_meta([6, 0, 9], [1])
    model = build_model({"model": "fm", "style": "textbook", "emb_dim": 4}, meta).double()
    with torch.no_grad():
        model.first_order.normal_()
    ids = random_ids(meta, 10, 1)
    w = model.first_order.detach().numpy()[:, 0]
    n = ids.numpy()
    per_field = np.stack([w[n[:, 0]], values_of(n[:, 1]) * w[6], w[6 + LEVELS + 3 + n[:, 2]]], axis=1)
    np.testing.assert_allclose(model.first_order_logit(ids).detach().numpy(), per_field.sum(1), rtol=1e-12)
    np.testing.assert_allclose(field_inputs(model, ids).first_order.numpy(), per_field, rtol=1e-12)


def fm_closed_form(table: np.ndarray, meta: dict, ids: np.ndarray, labels: np.ndarray):
    """(mean BCE loss, gradient w.r.t. the table) of the paper's FM (logit = sum_d sum_{i<j} e_i e_j) in float64:
    dL/de_f = (sigmoid(logit) - y) / B * (sum_j e_j - e_f); a scalar field's row gets sum_b value_b dL/de_bf."""
    E = reference_embeddings(table, meta, ids)
    total = E.sum(axis=1)
    logit = 0.5 * (total**2 - (E**2).sum(axis=1)).sum(axis=1)
    p = 1 / (1 + np.exp(-logit))
    loss = -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    grad_e = ((p - labels) / len(labels))[:, None, None] * (total[:, None, :] - E)
    grad = np.zeros_like(table)
    for f, field in enumerate(meta["fields"]):
        if field.get("encoding") == "scalar":
            grad[field["offset"]] += (values_of(ids[:, f])[:, None] * grad_e[:, f]).sum(axis=0)
        else:
            np.add.at(grad, field["offset"] + ids[:, f], grad_e[:, f])
    return loss, grad


def fm_with_batch(seed: int = 0):
    meta = scalar_meta([5, 0, 7], [1])
    torch.manual_seed(seed)
    model = build_model({"model": "fm", "emb_dim": 3}, meta).double()
    with torch.no_grad():  # larger than the 1e-4 init, so that the logits and gradients are far from zero
        model.embedding.table[:5].normal_()
        model.embedding.table[5].normal_()
        model.embedding.table[5 + LEVELS + 3 :].normal_()
    ids = random_ids(meta, 24, seed)
    labels = torch.from_numpy(np.random.default_rng(seed).integers(0, 2, 24).astype(np.float64))
    return meta, model, ids, labels


def bce(model, ids, labels):
    return torch.nn.functional.binary_cross_entropy_with_logits(model(ids), labels)


def test_dense_gradient_of_the_one_row_matches_the_closed_form_and_finite_differences():
    meta, model, ids, labels = fm_with_batch()
    table = model.embedding.table.detach().numpy().copy()
    loss, grad = fm_closed_form(table, meta, ids.numpy(), labels.numpy())
    got = bce(model, ids, labels)
    got.backward()
    assert float(got) == pytest.approx(loss, rel=1e-12)
    np.testing.assert_allclose(model.embedding.table.grad.numpy(), grad, rtol=1e-9, atol=1e-14)
    assert np.abs(grad[5]).min() > 0  # the scalar row gets a gradient
    eps, (row, col) = 1e-6, (5, 1)
    up, down = table.copy(), table.copy()
    up[row, col] += eps
    down[row, col] -= eps
    numeric = (fm_closed_form(up, meta, ids.numpy(), labels.numpy())[0]
               - fm_closed_form(down, meta, ids.numpy(), labels.numpy())[0]) / (2 * eps)  # fmt: skip
    assert grad[row, col] == pytest.approx(numeric, rel=1e-6)


def test_sparse_gradient_holds_the_same_rows():
    meta, model, ids, labels = fm_with_batch(1)
    _, grad = fm_closed_form(model.embedding.table.detach().numpy(), meta, ids.numpy(), labels.numpy())
    model.sparse_gradients()
    bce(model, ids, labels).backward()
    sparse = model.embedding.table.grad
    assert sparse.is_sparse
    np.testing.assert_allclose(sparse.to_dense().numpy(), grad, rtol=1e-9, atol=1e-14)
    touched = set(sparse.coalesce().indices()[0].tolist())
    assert 5 in touched and not touched & set(range(6, 5 + LEVELS + 3))  # never an unused row of the scalar field


def test_fused_sgd_update_moves_the_one_row_by_the_closed_form_gradient():
    meta, model, ids, labels = fm_with_batch(2)
    before = model.embedding.table.detach().numpy().copy()
    _, grad = fm_closed_form(before, meta, ids.numpy(), labels.numpy())
    lr = 0.1
    dense = torch.optim.SGD([p for n, p in model.named_parameters() if n != "embedding.table"] or [torch.zeros(1)],
                            lr=lr)  # fmt: skip
    optimizer = FusedTableOptimizer(model.embedding, model.embedding_parameters(), "sgd", lr, dense)
    model.train()
    optimizer.zero_grad()
    bce(model, ids, labels).backward()
    optimizer.step()
    assert model.embedding.table.grad is None  # updated in the backward
    np.testing.assert_allclose(model.embedding.table.detach().numpy(), before - lr * grad, rtol=1e-9, atol=1e-14)


# -------------------------------------------------------------------------------------------------- end to end


def test_verdict_reads_scalar_fields_as_not_read():
    assert verdict.field_state(1.0, 1003, 16, scalar=True) == verdict.SCALAR
    assert verdict.field_state(1.0, 1003, 16) == "collapsed"
    rows = [
        {"field": "I1", "vocab_size": 1003, "ia": 1.0, "untrained": {"ia": 14.6}, "state": verdict.SCALAR},
        {"field": "C1", "vocab_size": 50, "ia": 12.0, "untrained": {"ia": 14.0}, "state": "not collapsed"},
    ]
    lines = verdict.field_lines(rows, 16)
    assert lines[0].startswith("0 of 1 fields collapsed") and lines[-1] == f"field I1: {READING}"
    only = verdict.field_lines(rows[:1], 16)
    assert only == ["no other field has 4 or more possible dimensions: nothing to judge", f"field I1: {READING}"]


@pytest.mark.parametrize("flag", [None, "--sparse-emb", "--fused-update"])
def test_train_then_spectrum_on_a_scalar_dataset(criteo, tmp_path, flag):
    ckpt = tmp_path / "fm.pt"
    args = ["train", criteo["data"], "--epochs", "1", "--emb-dim", "4", "--batch-size", "64", "--out", ckpt]
    result = invoke(*args, *([flag] if flag else []), *(["--optimizer", "adagrad"] if flag else []))
    assert result.exit_code == 0, result.output
    meta = json.loads((criteo["data"] / "meta.json").read_text())
    state = torch.load(ckpt, weights_only=False)["state_dict"]
    table = state["embedding.table"].numpy()
    for field in meta["fields"][:13]:
        start = field["offset"]
        assert np.abs(table[start]).max() > 0 and not table[start + 1 : start + field["vocab_size"]].any()
    report = invoke("spectrum", ckpt, "--json")
    assert report.exit_code == 0, report.output
    doc = json.loads(report.stdout)
    by_field = {r["field"]: r for r in doc["fields"]}
    for k in range(1, 14):
        assert by_field[f"I{k}"]["state"] == verdict.SCALAR and by_field[f"I{k}"]["ia"] == pytest.approx(1.0)
    assert all(by_field[f"C{k}"]["state"] != verdict.SCALAR for k in range(1, 27))
    assert f"fields I1, I2, I3, I4, I5, I6, I7, I8, I9, I10, I11, I12, I13: {READING}" in doc["verdict"]["lines"]
    assert doc["verdict"]["collapsed_fields"] == sum(r["state"] == "collapsed" for r in doc["fields"][13:])
    # Z is built from the model's embeddings (value x row), so it equals the reference built from the table.
    batch = load_split(criteo["data"], "valid").ids
    model = build_model(torch.load(ckpt, weights_only=False)["config"], meta).double()
    model.load_state_dict(state)
    want = reference_embeddings(model.embedding.table.detach().numpy(), meta, batch.numpy())
    np.testing.assert_allclose(model.embed(batch).detach().numpy(), want, rtol=1e-7, atol=1e-12)
    assert doc["batch"]["rows"] == len(batch)
    # The mean and min IA over fields leave the scalar fields out, in the report and in the training history.
    categorical = [r["ia"] for r in doc["fields"][13:]]
    assert doc["field_summary"]["mean_ia"] == pytest.approx(np.mean(categorical))
    summary = doc["field_summary"]
    assert summary["min_ia"] == pytest.approx(min(categorical)) and summary["min_ia_field"][0] == "C"
    last = torch.load(ckpt, weights_only=False)["history"][-1]
    assert last["mean_ia"] == pytest.approx(np.mean(last["field_ia"][13:]))
    # The scalar fields' IA of 1 fails no --fail-field-ia gate; a bound above a categorical field's IA does.
    low = min(r["ia"] for r in doc["fields"][13:])
    passed = json.loads(invoke("spectrum", ckpt, "--fail-field-ia", "1.01", "--json").stdout)["checks"]
    assert passed["passed"] and not passed["failures"]
    failed = json.loads(invoke("spectrum", ckpt, "--fail-field-ia", f"{low + 0.01}", "--json").stdout)["checks"]
    assert failed["failures"] and all(f"I{k} " not in failed["failures"][0] for k in range(1, 14))


def test_compare_and_gradients_run_on_scalar_checkpoints(criteo, tmp_path):
    base, deep = tmp_path / "fm.pt", tmp_path / "deepfm.pt"
    common = ["--epochs", "1", "--emb-dim", "4", "--batch-size", "64"]
    assert invoke("train", criteo["data"], *common, "--out", base).exit_code == 0
    assert invoke("train", criteo["data"], *common, "--arch", "parallel", "--dnn", "8", "--out", deep).exit_code == 0
    compare = invoke("compare", base, deep, "--json")
    assert compare.exit_code == 0, compare.output
    assert len(json.loads(compare.stdout)["runs"]) == 2
    gradients = invoke("gradients", deep, "--json")
    assert gradients.exit_code == 0, gradients.output
    assert json.loads(gradients.stdout)["dim"] == 39 * 4
