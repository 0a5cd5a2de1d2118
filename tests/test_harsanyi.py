"""Harsanyi AND-OR interactions: transforms against brute-force definitions, closed forms, sparse extraction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dcollapse.diagnostics import field_players as P
from dcollapse.diagnostics import harsanyi as H
from dcollapse.errors import UserError

# Independent references: loops over explicit subsets (frozensets), float64 numpy.


def _subsets(n):
    return [frozenset(i for i in range(n) if t >> i & 1) for t in range(2**n)]


def _index(s):
    return sum(1 << i for i in s)


def _dense_and(n):
    """Dense reward -> I_and matrix straight from the definition."""
    sets = _subsets(n)
    mat = np.zeros((2**n, 2**n))
    for a, s in enumerate(sets):
        for b, t in enumerate(sets):
            if t <= s:
                mat[a, b] = (-1) ** (len(s) - len(t))
    return mat


def _dense_or(n):
    """Dense reward -> I_or matrix: I_or(S) = -sum_{T subset S} (-1)^{|S|-|T|} v(N minus T), I_or(empty) = v(empty)."""
    sets = _subsets(n)
    full = frozenset(range(n))
    mat = np.zeros((2**n, 2**n))
    mat[0, 0] = 1.0
    for a, s in enumerate(sets):
        if not s:
            continue
        for t in sets:
            if t <= s:
                mat[a, _index(full - t)] = -((-1) ** (len(s) - len(t)))
    return mat


def _brute_reconstruct(iand, ior, n):
    """v'(T) = sum_{S subset T} I_and(S) + I_or(empty) + sum_{S non-empty, S cap T non-empty} I_or(S)."""
    sets = _subsets(n)
    out = np.zeros(2**n)
    for a, t in enumerate(sets):
        out[a] = sum(iand[b] for b, s in enumerate(sets) if s <= t) + ior[0]
        out[a] += sum(ior[b] for b, s in enumerate(sets) if s and s & t)
    return out


@pytest.mark.parametrize("n", [1, 3, 5, 8])
def test_fast_transforms_equal_dense_definitions(n):
    rng = np.random.default_rng(n)
    v = rng.normal(size=(2**n, 3))
    tv = torch.from_numpy(v)
    np.testing.assert_allclose(H.and_interactions(tv).numpy(), _dense_and(n) @ v, atol=1e-10)
    np.testing.assert_allclose(H.or_interactions(tv).numpy(), _dense_or(n) @ v, atol=1e-10)
    np.testing.assert_allclose(H.moebius_transpose(tv).numpy(), _dense_and(n).T @ v, atol=1e-10)
    np.testing.assert_allclose(H.zeta(H.moebius(tv)).numpy(), v, atol=1e-10)


def test_subset_index_matches_bits():
    masks = H.subset_masks(4)
    assert masks.shape == (16, 4)
    assert masks[0b1010].tolist() == [False, True, False, True]
    assert H.subset_orders(4)[0b1011] == 3
    assert H.subset_players(0b1011, 4) == [0, 1, 3]


def test_product_has_a_single_and_interaction_at_the_full_set():
    n = 6
    x = np.array([1.5, -2.0, 0.7, 3.0, -1.1, 0.4])
    masks = H.subset_masks(n).numpy()
    v = torch.from_numpy(np.prod(np.where(masks, x, 0.0), axis=1))  # baseline 0
    iand = H.harsanyi(v).iand[:, 0]
    expected = np.zeros(2**n)
    expected[-1] = np.prod(x)
    np.testing.assert_allclose(iand.numpy(), expected, atol=1e-12)


def test_planted_ground_truth_and_interactions():
    # v(x) = 2 x1 x2 + x3 + 0.5 x4 x5 x6 (players 0..5) plus two irrelevant players, binary input, baseline 0.
    n = 8

    def value(mask):
        x = mask.to(torch.float64)
        return (2 * x[:, 0] * x[:, 1] + x[:, 2] + 0.5 * x[:, 3] * x[:, 4] * x[:, 5])[:, None]

    v = H.masked_outputs(value, n, masks_per_call=37)
    iand = H.harsanyi(v).iand[:, 0]
    expected = torch.zeros(2**n, dtype=torch.float64)
    expected[_index({0, 1})] = 2.0
    expected[_index({2})] = 1.0
    expected[_index({3, 4, 5})] = 0.5
    torch.testing.assert_close(iand, expected, atol=1e-12, rtol=0)
    assert float(iand.sum()) == pytest.approx(float(v[-1, 0]))  # efficiency: sum of I_and = v(x_N)


def _random_mlp_values(n, samples, seed):
    """v(x_T) of a random tanh MLP on n inputs with baseline 0, for ``samples`` random inputs: [2^n, samples]."""
    gen = torch.Generator().manual_seed(seed)
    mlp = torch.nn.Sequential(torch.nn.Linear(n, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1)).double()
    for p in mlp.parameters():
        p.data = torch.randn(p.shape, generator=gen, dtype=torch.float64)
    x = torch.randn(samples, n, generator=gen, dtype=torch.float64)

    def value(mask):
        return mlp(mask.to(torch.float64)[:, None, :] * x[None]).squeeze(-1)  # [M, samples]

    return H.masked_outputs(value, n)


def test_universal_matching_on_random_mlp():
    n = 8
    v = _random_mlp_values(n, 4, seed=0)
    rng = np.random.default_rng(0)
    for result in (
        H.harsanyi(v),
        H.and_or(v),
        H.and_or(v, torch.from_numpy(rng.normal(size=v.shape)), torch.from_numpy(rng.normal(size=v.shape))),
    ):
        assert (result.reconstruct() - (v + result.q)).abs().max() < 1e-5
    # the fast reconstruction equals the brute-force universal-matching sum
    r = H.and_or(v[:, :1], torch.from_numpy(rng.normal(size=(2**n, 1))))
    brute = _brute_reconstruct(r.iand[:, 0].numpy(), r.ior[:, 0].numpy(), n)
    np.testing.assert_allclose(brute, r.reconstruct()[:, 0].numpy(), atol=1e-9)


def _dense_sparse_reference(v, lr, niter, tau):
    """The spec's extraction with dense matrices and torch autograd/SGD (float64), one sample v [2^n].

    Runs on v / max|v| and scales gamma, q back (the library's documented normalisation).
    """
    scale = v.abs().max()
    v = v / scale
    n = int(math.log2(v.shape[0]))
    m_and = torch.from_numpy(_dense_and(n))
    m_or = torch.from_numpy(_dense_or(n))
    gamma = torch.zeros_like(v, requires_grad=True)
    q = torch.zeros_like(v, requires_grad=True)
    opt = torch.optim.SGD([gamma, q], lr=lr, momentum=0.9)
    bound = tau * (v[-1] - v[0]).abs()
    for rate in np.logspace(np.log10(lr), np.log10(lr) - 1, niter):
        opt.param_groups[0]["lr"] = float(rate)
        opt.zero_grad()
        half = 0.5 * (v + q)
        loss = (m_and @ (half + gamma)).abs().sum() + (m_or @ (half - gamma)).abs().sum()
        loss.backward()
        opt.step()
        with torch.no_grad():
            q.clamp_(-bound, bound)
    return gamma.detach() * scale, q.detach() * scale


def test_sparse_extraction_matches_dense_autograd_reference():
    v = _random_mlp_values(5, 2, seed=3)
    ours = H.sparse_and_or(v, lr=1e-4, niter=200, tau=0.04)
    assert float(ours.gamma.abs().max()) > 1e-2 and float(ours.q.abs().max()) > 1e-3  # the descent moved
    for s in range(2):
        gamma, q = _dense_sparse_reference(v[:, s], lr=1e-4, niter=200, tau=0.04)
        torch.testing.assert_close(ours.gamma[:, s], gamma, atol=1e-9, rtol=0)
        torch.testing.assert_close(ours.q[:, s], q, atol=1e-9, rtol=0)


def test_sparse_extraction_is_sparser_and_still_matches():
    n = 8
    v = _random_mlp_values(n, 3, seed=1)
    dense = H.and_or(v)
    sparse = H.sparse_and_or(v, niter=1500)
    assert (sparse.reconstruct() - (v + sparse.q)).abs().max() < 1e-5
    bound = 0.04 * (v[-1] - v[0]).abs()
    assert bool((sparse.q.abs() <= bound + 1e-12).all())
    assert float(sparse.strengths().sum()) < 0.8 * float(dense.strengths().sum())


def test_order_distribution_on_known_interactions():
    n = 4
    iand = torch.zeros(2**n, 2, dtype=torch.float64)
    iand[0] = 7.0  # the empty set is ignored
    iand[_index({0, 1}), 0] = 3.0
    iand[_index({2}), 1] = -1.0
    ior = torch.zeros_like(iand)
    ior[_index({0, 1, 2}), 0] = -2.0
    result = H.AndOr(n, torch.zeros_like(iand), torch.zeros_like(iand), torch.zeros_like(iand), iand, ior)
    dist = H.order_distribution(result)
    # per-sample means: order 1: -0.5; order 2: +1.5; order 3: -1.0; total 3.0
    assert dist.total == pytest.approx(3.0)
    assert dist.positive == pytest.approx([0.0, 0.5, 0.0, 0.0])
    assert dist.negative == pytest.approx([-1 / 6, 0.0, -1 / 3, 0.0])
    assert sum(dist.strength) == pytest.approx(1.0)
    assert dist.mass_from(2) == pytest.approx(5 / 6)
    top = H.top_interactions(result, k=2)
    assert [(t.kind, t.players) for t in top] == [("and", [0, 1]), ("or", [0, 1, 2])]
    assert top[0].mean == pytest.approx(1.5) and top[0].salient_share == pytest.approx(0.5)


def test_salient_fraction_counts_per_sample():
    n = 3
    iand = torch.zeros(2**n, 1, dtype=torch.float64)
    iand[:4, 0] = torch.tensor([99.0, 10.0, 0.4, 0.6])  # the empty set is ignored; 0.4 < 5% of 10 < 0.6
    result = H.AndOr(n, iand, iand, iand, iand, torch.zeros_like(iand))
    assert H.salient_mask(result)[:4, 0].tolist() == [False, True, False, True]
    assert H.salient_fraction(result) == pytest.approx(2 / 14)


def _dist_with_high_mass(n, high):
    """A distribution with mass 1 - high at order 1 and ``high`` at order n."""
    return H.OrderDistribution([1 - high] + [0.0] * (n - 2) + [high], [0.0] * n, 1.0)


def test_two_phase_detector():
    n = 10
    masses = [0.5, 0.3, 0.2, 0.25, 0.4]
    found = H.detect_two_phase([1, 2, 3, 4, 5], [_dist_with_high_mass(n, m) for m in masses])
    assert found.from_order == 5 and found.boundary_epoch == 3 and found.two_phase
    assert found.high_order_mass == pytest.approx(masses)
    assert found.drop == pytest.approx(0.3) and found.rise == pytest.approx(0.2)
    falling = H.detect_two_phase([1, 2, 3], [_dist_with_high_mass(n, m) for m in (0.5, 0.4, 0.3)])
    assert falling.boundary_epoch == 3 and not falling.two_phase
    with pytest.raises(UserError):
        H.detect_two_phase([1], [_dist_with_high_mass(n, 0.5)], from_order=11)
    assert [H.default_high_order(k) for k in (1, 2, 3, 9, 12)] == [1, 2, 2, 4, 6]


def test_loss_gap_onset():
    history = [
        {"epoch": 1, "train_loss": 0.60, "valid_logloss": 0.58},
        {"epoch": 2, "train_loss": 0.50, "valid_logloss": 0.45},
        {"epoch": 3, "train_loss": 0.40, "valid_logloss": 0.44},
        {"epoch": 4, "train_loss": 0.30, "valid_logloss": 0.50},
    ]
    gap = H.loss_gap(history)
    assert gap.gap == pytest.approx([-0.02, -0.05, 0.04, 0.20])
    assert gap.onset_epoch == 2


def test_bad_sizes_are_user_errors():
    with pytest.raises(UserError):
        H.moebius(torch.zeros(6))
    with pytest.raises(UserError):
        H.masked_outputs(lambda m: m.sum(1), 13)


def test_masked_outputs_chunks_cover_every_subset_once():
    calls = []

    def value(mask):
        calls.append(mask.shape[0])
        return torch.tensor([_index({i for i, b in enumerate(row) if b}) for row in mask.tolist()])

    out = H.masked_outputs(value, 5, masks_per_call=7)
    assert out.tolist() == list(range(32)) and sum(calls) == 32 and max(calls) == 7


# CTR models: players = fields (tiny synthetic dataset and `dcollapse.train` checkpoints)

import json  # noqa: E402

from typer.testing import CliRunner  # noqa: E402

from dcollapse import checkpoint  # noqa: E402
from dcollapse.cli.app import app  # noqa: E402
from dcollapse.data.dataset import load_split  # noqa: E402
from dcollapse.data.synth import write_ctr_dataset  # noqa: E402
from dcollapse.models import build_model, load_model  # noqa: E402
from dcollapse.train import train  # noqa: E402

VOCAB = [6, 9, 5, 12]
FIELDS = ["f1", "f2", "f3", "f4"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A DeepFM trained 3 epochs on a tiny synthetic dataset, with its per-epoch checkpoints."""
    root = tmp_path_factory.mktemp("interactions")
    write_ctr_dataset(root / "data", 900, len(VOCAB), 0, vocab_sizes=VOCAB)
    config = {"model": "fm", "arch": "parallel", "emb_dim": 4, "dnn": [8], "epochs": 3, "batch_size": 128,
              "lr": 2e-2, "patience": 0, "device": "cpu", "snapshot_rows": 64}  # fmt: skip
    train(root / "data", config, root / "run.pt", save_every_epoch=True)
    return root


def _textbook_model(data):
    meta = json.loads((data / "meta.json").read_text())
    torch.manual_seed(0)
    model = build_model({"model": "fm", "arch": "parallel", "style": "textbook", "emb_dim": 4, "dnn": [8]}, meta)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)  # weights large enough that every term matters
    return model.eval()


def test_field_values_match_plain_forward_passes(run):
    """v(x_N) = (2y-1) model(ids); with the OOV baseline v(x_empty) = (2y-1) model(all ids 0), first order included."""
    model = _textbook_model(run / "data")
    rows = load_split(run / "data", "valid")
    ids, labels = rows.ids[:7].long(), rows.labels[:7]
    sign = 2.0 * labels.double() - 1.0
    inputs = P.field_inputs(model, ids)
    value = P.field_value_fn(model, inputs, labels, range(4), P.field_baselines(model, "oov"))
    v = H.masked_outputs(value, 4)
    with torch.no_grad():
        torch.testing.assert_close(v[-1], sign * model(ids).double(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(v[0], sign * model(torch.zeros_like(ids)).double(), rtol=1e-5, atol=1e-5)
        # players {f2, f4}: masking f2 only = replacing its id by 0
        partial = P.field_value_fn(model, inputs, labels, [1, 3], P.field_baselines(model, "oov"))
        masked = ids.clone()
        masked[:, 1] = 0
        out = partial(torch.tensor([[False, True]]))[0]
        torch.testing.assert_close(out, sign * model(masked).double(), rtol=1e-5, atol=1e-5)


def test_mean_baseline_and_agop_shares(run):
    model = _textbook_model(run / "data")
    ids = load_split(run / "data", "train").ids[:50].long()
    mean = P.field_baselines(model, "mean", ids)
    with torch.no_grad():
        table = model.embedding.table
        expected = torch.stack([table[model.embedding.offsets[f] + ids[:, f]].mean(0) for f in range(4)])
    torch.testing.assert_close(mean.embeddings, expected)
    # AGOP trace shares against per-sample autograd gradients of the logit wrt each field's embedding
    shares = P.agop_field_shares(model, ids[:10])
    energy = torch.zeros(4, dtype=torch.float64)
    for row in ids[:10]:
        emb = model.embed(row[None]).detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(model.forward_from_embeddings(emb).sum(), emb)
        energy += (grad[0].double() ** 2).sum(dim=1)
    torch.testing.assert_close(shares, energy / energy.sum(), rtol=1e-5, atol=1e-8)


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_single_checkpoint_json(run):
    result = _cli("interactions", run / "run.pt", "--samples", 6, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["players"] == FIELDS and doc["samples"] == 6 and doc["selection"] == {"by": "all"}
    r = doc["results"][0]
    assert sum(p - q for p, q in zip(r["order"]["positive"], r["order"]["negative"], strict=True)) == pytest.approx(1)
    assert len(r["top"]) == 10 and all(t["kind"] == "and" for t in r["top"])  # AND-only without --sparse
    # v(x_N) averaged over the samples equals the model's own sign-adjusted logits on the same rows
    rows = load_split(run / "data", "train")
    index = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))[:6].sort().values
    ckpt = checkpoint.load(run / "run.pt")
    assert r["epoch"] == ckpt["best_epoch"]  # the main checkpoint holds the best epoch's weights
    model = load_model(ckpt)
    with torch.no_grad():
        expected = ((2 * rows.labels[index] - 1) * model(rows.ids[index].long())).double().mean()
    assert r["v_full"] == pytest.approx(float(expected), abs=1e-5)


def test_cli_fields_top_and_sparse(run, tmp_path):
    result = _cli("interactions", run / "run.pt", "--fields", "f4,f2", "--baseline", "zero", "--samples", 4,
                  "--sparse", "--niter", 50, "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["players"] == ["f4", "f2"] and doc["options"]["sparse"]
    for rank_by in ("agop", "masking"):
        result = _cli("interactions", run / "run.pt", "--top", 2, "--rank-by", rank_by, "--samples", 4, "--json")
        assert result.exit_code == 0, result.output
        doc = json.loads(result.stdout)
        scores = doc["selection"]["scores"]
        assert doc["selection"]["by"] == rank_by and len(doc["players"]) == 2
        assert sorted(doc["players"]) == sorted(sorted(scores, key=scores.get)[-2:])
    plot = tmp_path / "orders.png"
    result = _cli("interactions", run / "run.pt", "--samples", 4, "--plot", plot)
    assert result.exit_code == 0, result.output
    assert "strongest interactions" in result.stdout and plot.read_bytes()[:4] == b"\x89PNG"


def test_cli_dynamics_over_epoch_checkpoints(run, tmp_path):
    plot = tmp_path / "dynamics.png"
    epochs = [run / f"run.epoch{e}.pt" for e in (3, 1, 2)]  # any order: sorted by epoch
    result = _cli("interactions", *epochs, "--samples", 4, "--json", "--plot", plot)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [r["epoch"] for r in doc["results"]] == [1, 2, 3]
    history = checkpoint.load(run / "run.pt")["history"]
    gaps = [h["valid_logloss"] - h["train_loss"] for h in history]
    assert doc["loss_gap"]["gap"] == pytest.approx(gaps)
    assert doc["loss_gap"]["onset_epoch"] == 1 + int(np.argmin(gaps))
    mass = [r["order"] for r in doc["results"]]
    m0 = doc["phase"]["from_order"]
    expected = [sum(p - q for p, q in zip(o["positive"][m0 - 1 :], o["negative"][m0 - 1 :], strict=True)) for o in mass]
    assert doc["phase"]["high_order_mass"] == pytest.approx(expected)
    assert doc["phase"]["boundary_epoch"] == 1 + int(np.argmin(expected))
    assert plot.read_bytes()[:4] == b"\x89PNG"
    table = _cli("interactions", *epochs, "--samples", 4)
    assert table.exit_code == 0 and "phase boundary" in table.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["--fields", "f1,nope"],
        ["--fields", "f1", "--top", "2"],
        ["--top", "9"],
        ["--baseline", "median"],
        ["--rank-by", "magic", "--top", "2"],
        ["--split", "holdout"],
        ["--plot", "orders.gif"],
    ],
)
def test_cli_bad_input_exits_2(run, tmp_path, args):
    args = [a.replace("orders", str(tmp_path / "orders")) for a in args]
    result = _cli("interactions", run / "run.pt", "--samples", 2, *args)
    assert result.exit_code == 2, result.output
    assert not list(tmp_path.iterdir())


def test_cli_refuses_duplicate_epochs_and_foreign_files(run, tmp_path):
    result = _cli("interactions", run / "run.epoch1.pt", run / "run.epoch1.pt")
    assert result.exit_code == 2 and "same epoch" in result.output
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    assert _cli("interactions", junk).exit_code == 2
