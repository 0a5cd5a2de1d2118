"""scripts/bench_peers.py: every library reads the same rows of the same ids, the interleaved schedule, the CLI's
bad input. DeepCTR-Torch and torchfm are optional: their cases skip when they are absent."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from dcollapse.data.dataset import load_meta, load_split
from dcollapse.data.synth import write_ctr_dataset
from dcollapse.errors import UserError

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
VOCAB = [3, 5, 7, 4]  # synthetic values per field; the dataset adds 2 ids per field (OOV, missing)


@pytest.fixture(scope="module")
def bench():
    """The script as a module (scripts/ on sys.path: it imports the per-field baseline from bench_train)."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        spec = importlib.util.spec_from_file_location("bench_peers", SCRIPTS / "bench_peers.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_peers"] = module  # its dataclass looks its module up there
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("bench_peers", None)
        sys.path.remove(str(SCRIPTS))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("peers") / "ctr"
    write_ctr_dataset(out, rows=600, fields=len(VOCAB), seed=3, vocab_sizes=VOCAB)
    return out


def installed(bench) -> list[str]:
    return [lib for lib in bench.LIBRARIES if bench.available(lib)]


def set_fm_table(c, table: torch.Tensor, meta: dict) -> None:
    """Give ``c``'s FM the embedding table [sum V, d] (per field: its block of rows), no first-order term, no bias."""
    m = c.model
    blocks = [table[f["offset"] : f["offset"] + f["vocab_size"]] for f in meta["fields"]]
    with torch.no_grad():
        if c.library.startswith("dcollapse"):
            m.embedding.table.copy_(table)
            m.first_order.zero_()
            m.head.bias.zero_()
        elif c.library == "per-field":
            for emb, block in zip(m.embeddings, blocks, strict=True):
                emb.weight.copy_(block)
        elif c.library == "deepctr-torch":
            for f, block in zip(meta["fields"], blocks, strict=True):
                m.embedding_dict[f["name"]].weight.copy_(block)
                m.linear_model.embedding_dict[f["name"]].weight.zero_()
            m.out.bias.zero_()
        else:  # torchfm: one table, offsets added by the model
            m.embedding.embedding.weight.copy_(table)
            m.linear.fc.weight.zero_()
            m.linear.bias.zero_()


def test_every_library_reads_the_same_rows(bench, data):
    """Given one table, every library's FM gives the click probabilities of a float64 numpy FM on the test ids:
    the id conversions (float columns, int64 with the model's own offsets, per-field splits) keep each id's row."""
    meta = load_meta(data)
    train, test = load_split(data, "train", meta), load_split(data, "test", meta)
    rows = sum(f["vocab_size"] for f in meta["fields"])
    table = torch.randn(rows, 8, generator=torch.Generator().manual_seed(0)) * 0.5
    offsets = np.array([f["offset"] for f in meta["fields"]])
    E = table.double().numpy()[test.ids.numpy() + offsets]  # [N, F, d]
    expected = 1 / (1 + np.exp(-0.5 * ((E.sum(1) ** 2) - (E**2).sum(1)).sum(1)))
    libraries = installed(bench)
    for library in libraries:
        c = bench.contender(library, meta, [], 8, 1e-3, train.ids, test.ids)
        set_fm_table(c, table, meta)
        c.model.eval()
        with torch.no_grad():
            got = c.probs(c.test_inputs).double().numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=library)
    assert {"dcollapse", "dcollapse-dense", "per-field"} <= set(libraries)


def test_rounds_interleave_the_same_batches(bench, data):
    """Each round every library takes its next slice of steps, in turn; all see the same rows in the same order,
    every batch of every epoch once; the warm-up steps are not counted."""
    meta = load_meta(data)
    train, test = load_split(data, "train", meta), load_split(data, "test", meta)
    calls: list[tuple[str, float]] = []
    block = []
    for library in installed(bench):
        c = bench.contender(library, meta, [], 4, 1e-3, train.ids, test.ids)
        step = c.step

        def recorded(x, y, step=step, library=library):
            calls.append((library, float(y.sum()) + 1e3 * len(y)))
            return step(x, y)

        c.step = recorded
        block.append(c)
    batch, epochs, rounds, warmup = 64, 2, 3, 2
    bench.train_interleaved(block, train.labels, batch, epochs, rounds, warmup)
    slices = bench.schedule(len(train), batch, epochs, rounds)
    names = [c.library for c in block]
    assert [lib for lib, _ in calls] == [lib for s in slices for lib in names for _ in s]
    per_library = {lib: [key for name, key in calls if name == lib] for lib in names}
    assert all(keys == per_library["dcollapse"] for keys in per_library.values())
    steps = epochs * -(-len(train) // batch)
    sizes = [min(batch, len(train) - start) for epoch in range(epochs) for start in range(0, len(train), batch)]
    for c in block:
        assert c.steps == steps and len(c.round_rates) == rounds
        assert c.samples == sum(sizes[warmup:]) and c.seconds > 0
        assert 0 <= bench.test_scores(c, test.labels)["auc"] <= 1


def test_schedule_covers_every_batch_once(bench):
    slices = bench.schedule(rows=10, batch=3, epochs=2, rounds=3)
    assert [b for s in slices for b in s] == [(e, s) for e in range(2) for s in (0, 3, 6, 9)]
    assert [len(s) for s in slices] == [3, 2, 3]
    assert len(bench.schedule(rows=4, batch=4, epochs=1, rounds=5)) == 1  # never an empty round


def test_deepctr_inputs_are_exact_floats(bench):
    ids = torch.tensor([[0, 2**24 - 1], [7, 1]], dtype=torch.int32)
    assert torch.equal(bench.deepctr_inputs(ids).long(), ids.long())
    with pytest.raises(UserError, match="2\\^24"):
        bench.deepctr_inputs(ids + 1)


def test_bayes_auc_scores_the_test_rows(bench, data):
    """The planted probabilities of the test rows against the test labels (pairwise count, ties half)."""
    labels = load_split(data, "test").labels
    prob = pl.read_parquet(data / "truth.parquet").filter(pl.col("split") == "test")["prob"].to_numpy()
    y = labels.numpy()
    pos, neg = prob[y == 1], prob[y == 0]
    expected = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    assert bench.bayes_auc(data, labels) == pytest.approx(expected, abs=1e-12)
    assert bench.bayes_auc(data.parent, labels) is None


def test_main_prints_one_row_per_library(bench, data, capsys):
    bench.main([str(data), "--models", "FM", "--batches", "128", "--libraries", "dcollapse,per-field", "--rounds",
                "2", "--warmup", "1"])  # fmt: skip
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| dcollapse")
            or line.startswith("| per-field")]  # fmt: skip
    assert len(rows) == 2 and rows[0].split("|")[8].strip() == "1.00x"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["{missing}"], "meta.json"),
        (["{data}", "--libraries", "torchfm"], "starting with dcollapse"),
        (["{data}", "--models", "NFM"], "--models"),
        (["{data}", "--batches", "0"], "--batches"),
        (["{data}", "--rounds", "0"], "--rounds"),
    ],
)
def test_bad_input_is_one_line_exit_2(bench, data, capsys, argv, message):
    args = [a.format(data=data, missing=data.parent / "nowhere") for a in argv]
    with pytest.raises(SystemExit) as exit_:
        bench.main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and message in err[-1] and "Traceback" not in "\n".join(err)
