"""Sparse Random Hierarchy Model: generator invariants against an independent recursive parser and brute-force
enumeration, perturbation invariance, models against explicit references, sensitivity arithmetic, training
and checkpoints, and the CLI (synth srhm, hierarchy check/train/sensitivity/curve)."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from dcollapse import checkpoint
from dcollapse.cli import hierarchy as hierarchy_cli
from dcollapse.errors import UserError
from dcollapse.hierarchy.curve import crossing
from dcollapse.hierarchy.generator import (
    Choices,
    Grammar,
    encode,
    gaussian_like,
    load_data,
    parse,
    perturb,
    render,
    sample,
    sample_grammar,
    save_data,
)
from dcollapse.hierarchy.models import HierarchicalNet
from dcollapse.hierarchy.sensitivity import measure, pair_distance, shift_distance
from dcollapse.hierarchy.train import TrainConfig, load_model, train

SPEC = dict(L=2, s=2, s0=1, v=6, m=6, n_c=6)  # spec A.7.1


# ------------------------------------------------------------------------------ an independent reference parser


def reference_decode(grammar: Grammar, x: list[int]) -> int:
    """Recursive, dictionary-based parse of one sample; -1 when it is not a sentence of the grammar."""
    S, s, empty = grammar.patch, grammar.s, grammar.empty
    lookup = [
        {tuple(int(c) for c in grammar.rules[t][sym, r]): sym for sym in range(len(grammar.rules[t]))
         for r in range(grammar.m) if grammar.rules[t][sym, 0, 0] >= 0}
        for t in range(grammar.L)
    ]  # fmt: skip
    allowed = {tuple(int(o) for o in row) for row in grammar.arrangements}
    seq = list(x)
    for t in range(grammar.L - 1, -1, -1):
        parents = []
        for i in range(0, len(seq), S):
            block = seq[i : i + S]
            pos = tuple(j for j, c in enumerate(block) if c != empty)
            if not pos and t > 0:
                parents.append(empty)
                continue
            key = tuple(block[j] for j in pos)
            if len(pos) != s or pos not in allowed or key not in lookup[t]:
                return -1
            parents.append(lookup[t][key])
        seq = parents
    return seq[0]


def spec_grammar(sparsity: str = "A", seed: int = 0) -> Grammar:
    return sample_grammar(**SPEC, sparsity=sparsity, seed=seed)


# ------------------------------------------------------------------------------ generator invariants


@pytest.mark.parametrize("sparsity", ["A", "B"])
def test_spec_grammar_invariants(sparsity):
    g = spec_grammar(sparsity)
    x, y = sample(g, 400, seed=3)
    assert g.length == 16 and x.shape == (400, 16)
    assert ((x != g.empty).sum(axis=1) == g.s**g.L).all()  # exactly s^L informative positions
    for table in g.rules:  # each s-tuple is used by at most one rule at a depth
        rows = table[(table >= 0).all(axis=(1, 2))].reshape(-1, g.s)
        assert len({tuple(r) for r in rows}) == len(rows)
    assert [reference_decode(g, row.tolist()) for row in x] == y.tolist()
    assert (parse(g, x).labels == y).all()
    assert len(np.unique(x, axis=0)) == len(x)


def test_sparsity_type_a_keeps_each_child_in_its_slot_and_b_only_the_order():
    a, b = spec_grammar("A"), spec_grammar("B")
    assert a.arrangements.tolist() == [[0, 2], [0, 3], [1, 2], [1, 3]]
    assert len(b.arrangements) == math.comb(4, 2) and (np.diff(b.arrangements, axis=1) > 0).all()


def test_rules_are_unambiguous_and_deterministic():
    g1, g2, g3 = spec_grammar(seed=5), spec_grammar(seed=5), spec_grammar(seed=6)
    assert all((r1 == r2).all() for r1, r2 in zip(g1.rules, g2.rules, strict=True))
    assert any((r1 != r3).any() for r1, r3 in zip(g1.rules, g3.rules, strict=True))
    x1, y1 = sample(g1, 100, seed=2)
    x2, y2 = sample(g2, 100, seed=2)
    assert (x1 == x2).all() and (y1 == y2).all()
    assert not (sample(g1, 100, seed=9)[0] == x1).all()
    with pytest.raises(UserError):
        sample_grammar(L=2, s=2, s0=0, v=3, m=4, n_c=3)  # 3^2 = 9 tuples < 4 * 3 rules


def _enumerate(g: Grammar) -> np.ndarray:
    """Every input of the grammar by brute force over the rule and arrangement of every tree node."""
    n_arr = len(g.arrangements)
    nodes = [g.s**t for t in range(g.L)]  # informative nodes per depth
    rows = []
    for y in range(g.n_c):
        for combo in itertools.product(range(g.m * n_arr), repeat=sum(nodes)):
            picks = np.array([divmod(c, n_arr) for c in combo])  # [nodes, 2]: (rule, arrangement)
            bounds = np.cumsum([0, *nodes])
            choices = Choices(
                rule=[picks[None, a:b, 0] for a, b in itertools.pairwise(bounds)],
                arrangement=[picks[None, a:b, 1] for a, b in itertools.pairwise(bounds)],
            )
            rows.append(render(g, np.array([y]), choices)[0])
    return np.array(rows)


@pytest.mark.parametrize(
    "params, expected",
    [
        (dict(L=2, s=2, s0=0, v=8, m=2, n_c=2, sparsity="A"), 16),  # spec: RHM P_max = 2 * 2^3
        (dict(L=2, s=2, s0=1, v=4, m=2, n_c=2, sparsity="A"), 2 * (2 * 4) ** 3),
        (dict(L=2, s=2, s0=1, v=4, m=1, n_c=2, sparsity="B"), 2 * (1 * 6) ** 3),
    ],
)
def test_max_distinct_matches_enumeration(params, expected):
    g = sample_grammar(**params, seed=1)
    everything = _enumerate(g)
    assert g.max_distinct() == expected == len(np.unique(everything, axis=0)) == len(everything)
    assert (parse(g, everything).labels == np.repeat(np.arange(g.n_c), expected // g.n_c)).all()
    with pytest.raises(UserError, match="only"):
        sample(g, expected + 1)


def test_parse_rejects_non_sentences():
    g = spec_grammar()
    x, _ = sample(g, 50, seed=0)
    broken = x.copy()
    broken[:, 0], broken[:, 1] = broken[:, 1], broken[:, 0]  # swaps an informative and an empty slot pair
    moved = (broken != x).any(axis=1)
    informative = x.copy()
    for row in informative:  # wipe the first non-empty lowest-level patch
        start = np.flatnonzero(row != g.empty)[0] // g.patch * g.patch
        row[start : start + g.patch] = g.empty
    labels = parse(g, np.concatenate([broken, informative])).labels
    refs = [reference_decode(g, row.tolist()) for row in np.concatenate([broken, informative])]
    assert labels.tolist() == refs
    assert (labels[len(x) :] == -1).all() and moved.any()


# ------------------------------------------------------------------------------ perturbations


@pytest.mark.parametrize("sparsity", ["A", "B"])
@pytest.mark.parametrize("kind", ["synonyms", "positions"])
@pytest.mark.parametrize("level", [1, 2])
def test_perturbations_keep_the_label(sparsity, kind, level):
    g = spec_grammar(sparsity)
    x, y = sample(g, 300, seed=4)
    xp = perturb(g, x, kind, level, seed=11)
    assert [reference_decode(g, row.tolist()) for row in xp] == y.tolist()
    assert (xp != x).any(axis=1).mean() > 0.5  # it does change most samples
    if kind == "positions":  # the informative symbols, in order, are untouched
        assert all((a[a != g.empty] == b[b != g.empty]).all() for a, b in zip(x, xp, strict=True))
    else:  # the positions are untouched
        assert ((xp != g.empty) == (x != g.empty)).all()


def test_level_one_synonyms_keep_the_level_above():
    g = spec_grammar()
    x, _ = sample(g, 200, seed=4)
    xp = perturb(g, x, "synonyms", 1, seed=3)
    # the parents of the input patches (and where they sit) are unchanged, the input patches are not
    assert [reference_lift(g, row) for row in x] == [reference_lift(g, row) for row in xp]
    assert (xp != x).any(axis=1).mean() > 0.5


def reference_lift(g: Grammar, row: np.ndarray) -> list[int]:
    """Parents of the input patches of one sample (independent dictionary lookup)."""
    lookup = {tuple(int(c) for c in g.rules[-1][sym, r]): sym for sym in range(g.v) for r in range(g.m)
              if g.rules[-1][sym, 0, 0] >= 0}  # fmt: skip
    out = []
    for i in range(0, len(row), g.patch):
        block = [int(c) for c in row[i : i + g.patch] if c != g.empty]
        out.append(lookup[tuple(block)] if block else g.empty)
    return out


def test_gaussian_control_matches_the_norm_per_sample():
    x = torch.randn(8, 3, 16)
    ref = x + torch.randn(8, 3, 16) * torch.arange(8).view(8, 1, 1)
    noisy = gaussian_like(x, ref, seed=0)
    assert torch.allclose((noisy - x).flatten(1).norm(dim=1), (ref - x).flatten(1).norm(dim=1), atol=1e-5)
    assert not torch.allclose(noisy, ref)


def test_encodings():
    g = spec_grammar()
    sym = np.array([[0, g.empty, 5] + [g.empty] * 13])
    hot = encode(g, sym, "onehot", whitening=False)
    assert hot.shape == (1, 7, 16) and hot[0, 0, 0] == 6 and hot[0, 6, 1] == 6 and hot.sum() == 6 * 16
    zero = encode(g, sym, "all0", whitening=False)
    assert zero.shape == (1, 6, 16) and zero[0, :, 1].abs().sum() == 0 and zero.sum() == 12
    white = encode(g, sym, "all0", whitening=True)
    a = 1 / math.sqrt(5)
    assert torch.allclose(white[0, 0, 0], torch.tensor(1.0)) and torch.allclose(white[0, 1, 0], torch.tensor(-a))
    with pytest.raises(UserError):
        encode(g, sym, "binary")


# ------------------------------------------------------------------------------ models


def test_cnn_matches_strided_conv1d_reference():
    torch.manual_seed(0)
    net = HierarchicalNet("cnn", 5, 7, 2, 4, 3).double()
    x = torch.randn(6, 5, 16, dtype=torch.float64)
    h = x
    for w in net.weights:  # w [H, S*C] with patch-major layout -> conv weight [H, C, S]
        c = h.shape[1]
        kernel = w.view(w.shape[0], 4, c).permute(0, 2, 1)
        h = torch.relu(torch.nn.functional.conv1d(h, kernel, stride=4) / math.sqrt(c))
    expected = h.mean(dim=-1) @ net.beta / 7
    assert torch.allclose(net(x), expected, atol=1e-12)


def test_lcn_matches_per_patch_loop_and_is_not_shared():
    torch.manual_seed(1)
    net = HierarchicalNet("lcn", 3, 4, 2, 2, 2).double()
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    h = x.transpose(1, 2)
    for w in net.weights:  # w [n_out, S*C, H]
        c = h.shape[2]
        cols = [torch.relu(h[:, 2 * i : 2 * i + 2].reshape(5, -1) @ w[i] / math.sqrt(c)) for i in range(w.shape[0])]
        h = torch.stack(cols, dim=1)
    expected = h.mean(dim=1) @ net.beta / 4
    assert torch.allclose(net(x), expected, atol=1e-12)
    assert not torch.allclose(net.weights[0][0], net.weights[0][1])


def test_cnn_first_layer_is_equivariant_to_patch_permutation():
    torch.manual_seed(2)
    net = HierarchicalNet("cnn", 3, 8, 2, 2, 2)
    x = torch.randn(4, 3, 4)
    swapped = torch.cat([x[..., 2:], x[..., :2]], dim=-1)
    a, b = net.representations(x)[0], net.representations(swapped)[0]
    assert torch.allclose(a[:, 0], b[:, 1]) and torch.allclose(a[:, 1], b[:, 0])


# ------------------------------------------------------------------------------ sensitivity arithmetic


def test_pair_and_shift_distances_match_brute_force():
    f = torch.randn(9, 3, 2)
    g = torch.randn(9, 3, 2)
    brute = np.mean([((f[i] - f[j]) ** 2).sum().item() for i in range(9) for j in range(9) if i != j])
    assert pair_distance(f) == pytest.approx(brute, rel=1e-6)
    assert shift_distance(f, g) == pytest.approx(((f - g) ** 2).flatten(1).sum(1).mean().item(), rel=1e-6)


def test_sensitivity_of_rhm_to_positions_is_zero_and_to_synonyms_positive():
    g = sample_grammar(L=2, s=2, s0=0, v=4, m=4, n_c=4, seed=0)  # s0 = 0: a single arrangement
    torch.manual_seed(0)
    net = HierarchicalNet("cnn", 4, 16, 2, 2, 4).double().eval()
    result = measure(net, g, "all0", True, samples=60, seed=0)
    assert result.layers == ["layer1", "layer2", "output"] and result.levels == [1, 2]
    assert np.allclose(result.values["positions"], 0)
    assert np.allclose(result.values["gaussian"], 0)  # noise matched to a zero-norm perturbation
    syn = np.array(result.values["synonyms"])
    assert (syn > 0.05).all() and (syn < 3).all()


def test_crossing_interpolates_in_log_p():
    assert crossing([100, 1000], [0.8, 0.2]) == pytest.approx(10 ** (2 + 0.5), rel=1e-9)
    assert crossing([100, 1000], [0.4, 0.1]) is None and crossing([100, 1000], [0.9, 0.6]) is None


# ------------------------------------------------------------------------------ training and checkpoints


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    g = sample_grammar(L=2, s=2, s0=0, v=3, m=3, n_c=3, seed=0)  # P_max = 3 * 3^3 = 81
    x, y = sample(g, 81, seed=0)
    path = tmp_path_factory.mktemp("srhm") / "rhm"
    save_data(path, g, x, y, encoding="onehot", whitening=True, sample_seed=0)
    return path


def test_save_and_load_data_roundtrip(tiny_data, tmp_path):
    meta, g, x, y = load_data(tiny_data)
    assert meta["samples"] == 81 and x.shape == (81, 4) and (parse(g, x).labels == y).all()
    (tmp_path / "hierarchy.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(UserError, match="not a hierarchy dataset"):
        load_data(tmp_path)


def test_training_fits_the_train_set_and_checkpoint_roundtrips(tiny_data, tmp_path):
    config = TrainConfig(width=16, train_size=60, test_size=21, epochs=60, batch_size=8, lr=1.0, loss_threshold=0.05)
    ckpt = train(config, tiny_data)
    assert ckpt["kind"] == "hierarchy" and ckpt["stopped"] == "loss_threshold"
    history = ckpt["history"]
    assert history[-1]["train_loss"] < 0.05 < history[0]["train_loss"] and history[-1]["train_error"] == 0
    assert set(history[0]) == {"epoch", "train_loss", "train_error", "test_loss", "test_error", "seconds"}
    checkpoint.save(tmp_path / "run.pt", ckpt)
    loaded = checkpoint.load(tmp_path / "run.pt")
    net, g = load_model(loaded)
    _, _, x, y = load_data(tiny_data)
    with torch.no_grad():
        err = (net(encode(g, x[-21:], "onehot", True)).argmax(1).numpy() != y[-21:]).mean()
    assert err == pytest.approx(ckpt["test"]["error"])


def test_training_is_deterministic_given_the_seed(tiny_data):
    config = TrainConfig(width=8, train_size=40, test_size=20, epochs=2, batch_size=8, lr=1.0)
    a, b = train(config, tiny_data), train(config, tiny_data)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    c = train(TrainConfig(**{**config.__dict__, "seed": 1}), tiny_data)
    assert not torch.equal(a["state_dict"]["beta"], c["state_dict"]["beta"])


def test_ctrl_c_returns_the_run_so_far(tiny_data):
    def interrupt(entry):
        if entry["epoch"] == 2:
            raise KeyboardInterrupt

    ckpt = train(TrainConfig(width=8, train_size=40, test_size=20, epochs=5, batch_size=8), tiny_data, interrupt)
    assert ckpt["stopped"] == "interrupted" and [e["epoch"] for e in ckpt["history"]] == [1, 2]


def test_training_rejects_bad_sizes(tiny_data):
    with pytest.raises(UserError, match="exceeds"):
        train(TrainConfig(train_size=70, test_size=20), tiny_data)
    with pytest.raises(UserError, match="--arch"):
        train(TrainConfig(arch="mlp", train_size=10, test_size=10), tiny_data)


# ------------------------------------------------------------------------------ CLI


def cli_app() -> typer.Typer:
    app = typer.Typer()
    synth = typer.Typer()
    app.add_typer(synth, name="synth")
    hierarchy_cli.register_srhm(synth)
    hierarchy_cli.register(app)
    return app


def test_cli_end_to_end(tmp_path):
    runner, app = CliRunner(), cli_app()
    data = tmp_path / "d"
    args = ["synth", "srhm", "-L", "2", "--patch", "2", "--sparsity", "1", "--vocab", "3", "--synonyms", "3"]
    res = runner.invoke(app, [*args, "--classes", "3", "--samples", "120", "--out", str(data), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["length"] == 16
    res = runner.invoke(app, ["hierarchy", "check", str(data), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["decoded_match"] == 1.0
    run = tmp_path / "run.pt"
    train_args = ["--width", "8", "--train-size", "80", "--test-size", "40", "--epochs", "2", "--batch-size", "16"]
    res = runner.invoke(app, ["hierarchy", "train", str(data), *train_args, "--out", str(run), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["epochs"] == 2 and checkpoint.load(run)["kind"] == "hierarchy"
    plot = tmp_path / "sens.png"
    res = runner.invoke(app, ["hierarchy", "sensitivity", str(run), "--samples", "40", "--plot", str(plot), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert len(doc["values"]["synonyms"]) == 3 and plot.read_bytes()[:4] == b"\x89PNG"
    res = runner.invoke(app, ["hierarchy", "sensitivity", str(run), "--samples", "40", "--init"])
    assert res.exit_code == 0 and "initialisation" in res.stdout
    res = runner.invoke(
        app, ["hierarchy", "curve", str(data), "--train-sizes", "20,60", *train_args[:2], "--test-size", "40",
              "--epochs", "1", "--samples", "30", "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    curve = json.loads(res.stdout)
    assert [p["train_size"] for p in curve["points"]] == [20, 60] and curve["predicted"] == 4 * 3 * 9


def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path):
    runner, app = CliRunner(), cli_app()
    data = tmp_path / "d"
    res = runner.invoke(app, ["synth", "srhm", "--encoding", "binary", "--out", str(data)])
    assert res.exit_code == 2 and not data.exists()
    res = runner.invoke(app, ["synth", "srhm", "--vocab", "2", "--synonyms", "3", "--out", str(data)])
    assert res.exit_code == 2 and "not enough" in res.output and not data.exists()
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"not a checkpoint")
    res = runner.invoke(app, ["hierarchy", "sensitivity", str(bogus)])
    assert res.exit_code == 2 and "bogus.pt" in res.output
    res = runner.invoke(app, ["hierarchy", "train", str(tmp_path), "--out", str(tmp_path / "r.pt")])
    assert res.exit_code == 2 and not (tmp_path / "r.pt").exists()
    assert list(tmp_path.iterdir()) == [bogus]


def test_registered_in_the_dcollapse_app(tmp_path):
    from dcollapse.cli.app import app

    out_dir = tmp_path / "d"
    res = CliRunner().invoke(app, ["synth", "srhm", "--samples", "50", "--out", str(out_dir), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["samples"] == 50 and (out_dir / "hierarchy.json").is_file()
    assert CliRunner().invoke(app, ["hierarchy", "check", str(out_dir)]).exit_code == 0
