"""Models against independent float64 references: brute-force pair sums, the cross formula, explicit dot products."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from _ctr_fixtures import make_meta

from dcollapse.errors import UserError
from dcollapse.models import CrossNet, DotInteraction, build_model, load_model
from dcollapse.models.interactions import BiInteraction

VOCAB = [5, 7, 3, 6]
F = len(VOCAB)
META = make_meta(VOCAB)
COMBOS = list(itertools.product(["fm", "crossnet", "dot"], ["none", "parallel", "stacked"]))


def build(model: str, arch: str, **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    config = {"model": model, "arch": arch, "emb_dim": 3, "dnn": [8, 5], "cross_layers": 2, **extra}
    net = build_model(config, META).double()
    with torch.no_grad():  # embeddings of order 1 so products are not negligible
        net.embedding.table.normal_()
    return net


def random_ids(batch: int = 6, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, v, (batch,), generator=g) for v in VOCAB], dim=1).int()


def gathered(net, ids) -> np.ndarray:
    """E [B, F, d] gathered in numpy straight from the table and meta offsets."""
    table = net.embedding.table.detach().numpy()
    offsets = np.array([f["offset"] for f in META["fields"]])
    return table[ids.numpy() + offsets]


def np_mlp(net, x: np.ndarray) -> np.ndarray:
    for lin in net.mlp_linears():
        x = np.maximum(x @ lin.weight.detach().numpy().T + lin.bias.detach().numpy(), 0.0)
    return x


def np_pairs(E: np.ndarray) -> np.ndarray:
    """sum_{i<j} e_i * e_j by the explicit double loop, [B, d]."""
    p = np.zeros((E.shape[0], E.shape[2]))
    for i in range(E.shape[1]):
        for j in range(i + 1, E.shape[1]):
            p += E[:, i] * E[:, j]
    return p


def np_dots(E: np.ndarray) -> np.ndarray:
    return np.stack([(E[:, i] * E[:, j]).sum(1) for i in range(F) for j in range(i + 1, F)], axis=1)


def np_cross(net, x0: np.ndarray) -> np.ndarray:
    x = x0
    for layer in net.interaction.sets[0]:
        W, b = (t.detach().numpy() for t in layer.weight_and_bias())
        x = x0 * (x @ W.T + b) + x
    return x


def np_head(net, h: np.ndarray) -> np.ndarray:
    bias = net.head.bias.detach().numpy() if net.head.bias is not None else 0.0
    return (h @ net.head.weight.detach().numpy().T + bias)[:, 0]


def reference_logits(net, ids) -> np.ndarray:
    """The paper-style compositions written out in numpy."""
    E = gathered(net, ids)
    flat = E.reshape(len(E), -1)
    if net.model == "fm":
        z = np_pairs(E)
    elif net.model == "dot":
        z = np_dots(E)
    else:
        z = np_cross(net, flat)
    if net.arch == "none":
        h = z
    elif net.arch == "parallel":
        h = np.concatenate([z, np_mlp(net, flat)], axis=1)
    elif net.model == "dot":
        h = np_mlp(net, np.concatenate([flat, z], axis=1))
    else:
        h = np_mlp(net, z)
    return np_head(net, h)


@pytest.mark.parametrize(("model", "arch"), COMBOS)
def test_paper_compositions_match_numpy(model, arch):
    net = build(model, arch)
    ids = random_ids()
    expected = reference_logits(net, ids)
    np.testing.assert_allclose(net(ids).detach().numpy(), expected, rtol=1e-10, atol=1e-12)
    E = net.embed(ids)
    np.testing.assert_allclose(net.forward_from_embeddings(E).detach().numpy(), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(net.head(net.hidden(E)).squeeze(-1).detach().numpy(), expected, rtol=1e-10)


def test_fm_paper_is_the_plain_pair_sum_without_bias():
    net = build("fm", "none")
    ids = random_ids()
    expected = np_pairs(gathered(net, ids)).sum(1)
    np.testing.assert_allclose(net(ids).detach().numpy(), expected, rtol=1e-10)
    assert isinstance(net.head, torch.nn.Linear) and net.head.bias is None
    assert not net.head.weight.requires_grad and torch.all(net.head.weight == 1)
    assert net.mlp is None and net.mlp_linears() == []


def test_textbook_fm_and_deepfm_add_first_order_and_bias():
    for arch in ("none", "parallel"):
        net = build("fm", arch, style="textbook")
        with torch.no_grad():
            net.first_order.normal_()
            net.head.bias.fill_(0.3)
        ids = random_ids()
        E = gathered(net, ids)
        w = net.first_order.detach().numpy()[:, 0][ids.numpy() + np.array([f["offset"] for f in META["fields"]])]
        expected = 0.3 + w.sum(1) + np_pairs(E).sum(1)
        if arch == "parallel":
            d = net.interaction.out_dim
            mlp_w = net.head.weight.detach().numpy()[0, d:]
            expected = expected + np_mlp(net, E.reshape(len(E), -1)) @ mlp_w
        np.testing.assert_allclose(net(ids).detach().numpy(), expected, rtol=1e-10)
        with_ids = net.forward_from_embeddings(net.embed(ids), ids=ids)
        np.testing.assert_allclose(with_ids.detach().numpy(), expected, rtol=1e-10)


def test_textbook_deepfm_fm_weights_stay_fixed_under_training():
    net = build("fm", "parallel", style="textbook")
    d = net.interaction.out_dim
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    ids = random_ids(32)
    for _ in range(3):
        opt.zero_grad()
        net(ids).pow(2).mean().backward()
        opt.step()
    assert torch.all(net.head.weight[0, :d] == 1)
    assert not torch.all(net.head.weight[0, d:] == net.head.weight[0, d])


def test_low_rank_cross_is_u_times_v():
    torch.manual_seed(0)
    cross = CrossNet(F, 3, num_layers=2, rank=2).double()
    x0 = torch.randn(5, F * 3, dtype=torch.float64)
    E = x0.view(5, F, 3)
    x = x0.numpy()
    for layer in cross.sets[0]:
        U, V = layer.u.weight.detach().numpy(), layer.v.weight.detach().numpy()
        x = x0.numpy() * ((x @ V.T) @ U.T + layer.u.bias.detach().numpy()) + x
    np.testing.assert_allclose(cross(E).detach().numpy(), x, rtol=1e-10)


def test_multi_embedding_averages_per_set_interactions():
    torch.manual_seed(0)
    k, d = 3, 2
    E = torch.randn(4, F, d * k, dtype=torch.float64)
    sets = [E[:, :, m * d : (m + 1) * d].numpy() for m in range(k)]
    fm = BiInteraction(F, d, k)(E).numpy()
    np.testing.assert_allclose(fm, np.mean([np_pairs(s) for s in sets], axis=0), rtol=1e-10)
    dots = DotInteraction(F, d, k)(E).numpy()
    np.testing.assert_allclose(dots, np.mean([np_dots(s) for s in sets], axis=0), rtol=1e-10)
    cross = CrossNet(F, d, k, num_layers=1).double()
    expected = []
    for m, s in enumerate(sets):
        x0 = s.reshape(4, -1)
        W, b = (t.detach().numpy() for t in cross.sets[m][0].weight_and_bias())
        expected.append(x0 * (x0 @ W.T + b) + x0)
    np.testing.assert_allclose(cross(E).detach().numpy(), np.mean(expected, axis=0), rtol=1e-10)


@pytest.mark.parametrize(("model", "arch"), COMBOS)
def test_multi_embedding_models_run_and_fuse_consistently(model, arch):
    net = build(model, arch, num_sets=2)
    ids = random_ids()
    assert net.embedding.table.shape == (sum(VOCAB), 6) and net.embed(ids).shape == (6, F, 6)
    torch.testing.assert_close(net(ids), net.forward_from_embeddings(net.embed(ids)))


@pytest.mark.parametrize("interaction", ["fm", "dot", "cross"])
def test_interactions_gradcheck(interaction):
    torch.manual_seed(0)
    module = {"fm": BiInteraction(F, 3), "dot": DotInteraction(F, 3), "cross": CrossNet(F, 3, num_layers=2)}
    module = module[interaction].double()
    E = torch.randn(3, F, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(module, (E,))


@pytest.mark.parametrize(("model", "arch"), COMBOS)
def test_model_gradcheck_wrt_embeddings(model, arch):
    net = build(model, arch, activation="gelu")
    E = net.embed(random_ids(3)).detach().requires_grad_(True)
    assert torch.autograd.gradcheck(net.forward_from_embeddings, (E,))


@pytest.mark.parametrize(("model", "arch"), COMBOS)
def test_detached_partial_gradients_sum_to_the_total(model, arch):
    net = build(model, arch)
    E = net.embed(random_ids()).detach().requires_grad_(True)

    def grad(detach):
        out = net.forward_from_embeddings(E, detach=detach).sum()
        if not out.requires_grad:  # E reaches the logit only through the detached path
            return torch.zeros_like(E)
        (g,) = torch.autograd.grad(out, E, allow_unused=True)
        return torch.zeros_like(E) if g is None else g

    total, via_interaction, via_dnn = grad(None), grad("dnn"), grad("interaction")
    torch.testing.assert_close(via_interaction + via_dnn, total)
    if arch == "parallel":
        assert via_interaction.abs().sum() > 0 and via_dnn.abs().sum() > 0
    with pytest.raises(ValueError):
        net.forward_from_embeddings(E, detach="both")


@pytest.mark.parametrize(
    "switches",
    [
        {"activation": "identity"},
        {"norm": "batch", "dropout": 0.2},
        {"norm": "layer", "residual": True, "dnn": [8, 8]},
    ],
)
def test_dnn_switches(switches):
    net = build("fm", "parallel", **switches).eval()
    ids = random_ids()
    if switches.get("activation") == "identity":  # a purely linear DNN: the MLP output is affine in flat E
        x = net.embed(ids).flatten(1)
        W = torch.eye(x.shape[1], dtype=torch.float64)
        b = torch.zeros(x.shape[1], dtype=torch.float64)
        for lin in net.mlp_linears():
            W, b = lin.weight @ W, lin.weight @ b + lin.bias
        torch.testing.assert_close(net.mlp(x), x @ W.T + b)
    if "norm" in switches:
        kinds = {"batch": torch.nn.BatchNorm1d, "layer": torch.nn.LayerNorm}
        assert all(isinstance(block.norm, kinds[switches["norm"]]) for block in net.mlp.blocks)
    if switches.get("residual"):
        block = net.mlp.blocks[1]
        x = torch.randn(4, 8, dtype=torch.float64)
        torch.testing.assert_close(block(x), x + block.activation(block.norm(block.linear(x))))
    assert [lin.out_features for lin in net.mlp_linears()] == switches.get("dnn", [8, 5])
    assert net(ids).shape == (6,)


def test_bad_config_is_a_user_error():
    for bad in (
        {"model": "xdeepfm"},
        {"arch": "sideways"},
        {"arch": "parallel", "dnn": []},
        {"dropout": 1.5},
        {"emb_dim": 0},
        {"norm": "group"},
    ):
        with pytest.raises(UserError):
            build_model(bad, META)


def test_load_model_round_trip_and_mismatch():
    net = build_model({"model": "crossnet", "arch": "stacked", "dnn": [4]}, META)
    ckpt = {"config": net.config, "meta": META, "state_dict": net.state_dict()}
    again = load_model(ckpt)
    assert not again.training
    ids = random_ids()
    torch.testing.assert_close(again(ids), net.eval()(ids))
    ckpt["config"] = {**net.config, "emb_dim": 5}
    with pytest.raises(UserError, match="do not match"):
        load_model(ckpt)
