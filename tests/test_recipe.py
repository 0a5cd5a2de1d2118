"""`--recipe paper` and its parts: xavier init, lr decay on plateau, gradient clipping, the monitor expression,
CrossNet's linear DNNs, the gradient view's train mode; and the seed statistics of a sweep summary."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _ctr_fixtures import write_tiny
from typer.testing import CliRunner

import dcollapse.train as training
from dcollapse import checkpoint
from dcollapse.cli.app import app
from dcollapse.config import full_config
from dcollapse.errors import UserError
from dcollapse.models import CTRModel
from dcollapse.models.interactions import CrossLayer

runner = CliRunner()
SMALL = {"model": "fm", "arch": "parallel", "emb_dim": 4, "dnn": [16, 8], "batch_size": 256, "lr": 0.01}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny(tmp_path_factory)


def test_paper_recipe_sets_every_part_it_names_and_leaves_given_options_alone():
    default = full_config({"model": "crossnet", "arch": "parallel"})
    assert (default["init"], default["lr_decay"], default["clip_norm"], default["activation"]) == (
        "torch", 1.0, 0.0, "relu")  # fmt: skip
    paper = full_config({"model": "crossnet", "arch": "parallel", "recipe": "paper"})
    assert (paper["init"], paper["lr_decay"], paper["clip_norm"], paper["activation"]) == (
        "xavier", 0.1, 10.0, "identity")  # fmt: skip
    assert full_config({"model": "fm", "arch": "parallel", "recipe": "paper"})["activation"] == "relu"
    relu = full_config({"model": "dcnv2", "recipe": "paper", "activation": "relu", "clip_norm": 0})
    assert (relu["activation"], relu["clip_norm"], relu["init"]) == ("relu", 0.0, "xavier")
    assert full_config({"recipe": "paper"})["l2_emb"] == 0.0  # the recipe never adds an L2 penalty
    with pytest.raises(UserError, match="monitor must be one of auc, logloss, auc-logloss"):
        full_config({"monitor": "AUC-logloss "})
    with pytest.raises(UserError, match="lr_decay must be <= 1"):
        full_config({"lr_decay": 2})


@pytest.mark.parametrize("rank", [0, 3])
def test_xavier_init_gives_every_linear_map_xavier_normal_weights_and_zero_bias(rank):
    torch.manual_seed(0)
    config = {"model": "crossnet", "arch": "parallel", "emb_dim": 8, "dnn": [300, 200], "cross_rank": rank}
    model = CTRModel({**config, "init": "xavier"}, [50] * 6)
    maps = [m for m in model.modules() if isinstance(m, torch.nn.Linear) or (isinstance(m, CrossLayer) and not rank)]
    assert len(maps) == 2 + 1 + (3 if not rank else 6)  # MLP, head, cross layers (two factors each when low-rank)
    for module in maps:
        out_dim, in_dim = module.weight.shape
        if out_dim * in_dim > 5000:  # enough entries for a 10% check of the std
            std = module.weight.double().std().item()
            assert std == pytest.approx(math.sqrt(2.0 / (in_dim + out_dim)), rel=0.1)
        if module.bias is not None:
            assert torch.count_nonzero(module.bias) == 0
    assert model.embedding.table.std().item() == pytest.approx(1e-4, rel=0.1)  # the tables keep N(0, 1e-4)
    torch.manual_seed(0)
    default = CTRModel(config, [50] * 6)
    bound = 1 / math.sqrt(default.mlp.linears()[0].in_features)  # PyTorch's default: U(-1/sqrt(in), 1/sqrt(in))
    assert default.mlp.linears()[0].weight.abs().max().item() <= bound
    assert torch.count_nonzero(default.mlp.linears()[0].bias) > 0


def test_xavier_init_keeps_the_fixed_head_weights_of_fm():
    fm = CTRModel({"model": "fm", "init": "xavier", "emb_dim": 4}, [10] * 3)
    assert torch.equal(fm.head.weight, torch.ones_like(fm.head.weight)) and fm.head.bias is None
    textbook = CTRModel({"model": "fm", "arch": "parallel", "style": "textbook", "init": "xavier", "emb_dim": 4,
                         "dnn": [8]}, [10] * 3)  # fmt: skip
    assert torch.equal(textbook.head.weight[:, :4], torch.ones(1, 4))


def test_crossnet_dnn_of_the_paper_recipe_is_linear():
    config = full_config({"model": "crossnet", "arch": "stacked", "recipe": "paper", "emb_dim": 4, "dnn": [8, 8]})
    model = CTRModel(config, [10] * 3)
    x, y = torch.randn(5, 12), torch.randn(5, 12)
    assert torch.allclose(model.mlp(x + 2 * y), model.mlp(x) + 2 * model.mlp(y) - model.mlp(torch.zeros(5, 12)),
                          atol=1e-5)  # affine: no hidden activation  # fmt: skip


def test_monitor_score_is_the_fuxictr_expression():
    valid = {"auc": 0.75, "logloss": 0.45}
    assert training.monitor_score(valid, "auc") == 0.75
    assert training.monitor_score(valid, "logloss") == -0.45
    assert training.monitor_score(valid, "auc-logloss") == pytest.approx(0.30)


def test_lr_decays_tenfold_after_each_epoch_without_improvement_and_not_below_the_floor():
    param = torch.nn.Parameter(torch.zeros(2))
    adam = torch.optim.Adam([param], lr=1e-3)
    clipped = training.ClipGradients(adam, [param], 10.0)
    for expected in (1e-4, 1e-5, 1e-6, 1e-6):
        training.decay_lr(clipped, 0.1)
        assert adam.param_groups[0]["lr"] == pytest.approx(expected)


def test_clip_gradients_limits_the_total_norm_before_the_step():
    param = torch.nn.Parameter(torch.zeros(4))
    sgd = torch.optim.SGD([param], lr=1.0)
    clipped = training.ClipGradients(sgd, [param], 10.0)
    param.grad = torch.tensor([30.0, 40.0, 0.0, 0.0])  # norm 50 -> 10
    clipped.step()
    assert torch.allclose(param.detach(), torch.tensor([-6.0, -8.0, 0.0, 0.0]))
    param.grad = torch.tensor([3.0, 4.0, 0.0, 0.0])  # norm 5: unchanged
    clipped.step()
    assert torch.allclose(param.detach(), torch.tensor([-9.0, -12.0, 0.0, 0.0]))


def test_training_with_the_paper_recipe_decays_lr_and_picks_the_best_epoch_by_the_monitor(tiny, tmp_path):
    config = {**SMALL, "recipe": "paper", "epochs": 6, "patience": 0, "monitor": "auc-logloss", "lr": 0.05}
    ckpt = training.train(tiny, config, tmp_path / "p.pt")
    history = ckpt["history"]
    scores = [h["valid_auc"] - h["valid_logloss"] for h in history]
    assert ckpt["best_epoch"] == int(np.argmax(scores)) + 1
    bad = sum(scores[i] <= max(scores[:i]) for i in range(1, len(scores)))
    lr = ckpt["resume"]["optimizer"]["param_groups"][0]["lr"]
    assert lr == pytest.approx(max(0.05 * 0.1**bad, 1e-6))
    assert ckpt["config"]["init"] == "xavier" and ckpt["config"]["clip_norm"] == 10.0
    resumed = training.train(
        tiny, {**config, "epochs": 7}, tmp_path / "p.pt", resume=checkpoint.load(tmp_path / "p.pt")
    )
    assert len(resumed["history"]) == 7 and resumed["history"][:6] == history


def test_clip_and_decay_refuse_sparse_table_gradients(tiny, tmp_path):
    with pytest.raises(UserError, match="--clip-norm and --lr-decay need dense table gradients"):
        training.train(tiny, {**SMALL, "recipe": "paper", "sparse_emb": True, "epochs": 1}, tmp_path / "s.pt")


def test_cli_recipe_paper_and_monitor(tiny, tmp_path):
    out = tmp_path / "r.pt"
    result = runner.invoke(app, ["train", str(tiny), "--model", "dcnv2", "--emb-dim", "4", "--dnn", "8",
                                 "--epochs", "1", "--recipe", "paper", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    config = checkpoint.load(out)["config"]
    assert (config["init"], config["lr_decay"], config["clip_norm"], config["activation"]) == (
        "xavier", 0.1, 10.0, "identity")  # fmt: skip
    bad = runner.invoke(app, ["train", str(tiny), "--monitor", "auc+logloss", "--out", str(tmp_path / "x.pt")])
    assert bad.exit_code == 2 and "--monitor must be one of" in bad.output and "Traceback" not in bad.output


def test_gradient_view_in_train_mode_has_dropout_and_eval_mode_does_not(tiny, tmp_path):
    out = tmp_path / "d.pt"
    training.train(tiny, {**SMALL, "dropout": 0.5, "epochs": 1}, out)

    def norm(*args):
        result = runner.invoke(app, ["gradients", str(out), "--batch", "300", "--json", *args])
        assert result.exit_code == 0, result.output
        import json

        doc = json.loads(result.stdout)
        return doc["mode"], doc["gradients"]["dnn"]["norm"]

    train_mode, train_norm = norm()
    again = norm("--mode", "train")
    eval_mode, eval_norm = norm("--mode", "eval")
    assert (train_mode, eval_mode) == ("train", "eval")
    assert again[1] == train_norm  # seeded dropout: repeatable
    assert eval_norm != pytest.approx(train_norm, rel=1e-3)  # dropout changes the gradient through the DNN
    bad = runner.invoke(app, ["gradients", str(out), "--mode", "test"])
    assert bad.exit_code == 2 and "--mode must be one of train, eval" in bad.output
