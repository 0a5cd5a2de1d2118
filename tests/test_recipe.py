"""`--recipe paper` and its parts: xavier init, lr decay on plateau, gradient clipping, the monitor expression,
CrossNet's linear DNNs, the gradient view's train mode; and the seed statistics of a sweep summary."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _ctr_fixtures import write_tiny
from typer.testing import CliRunner

import dcollapse.optim as optim
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
    clipped = optim.ClipGradients(adam, [param], 10.0)
    for expected in (1e-4, 1e-5, 1e-6, 1e-6):
        optim.decay_lr(clipped, 0.1)
        assert adam.param_groups[0]["lr"] == pytest.approx(expected)


def test_clip_gradients_limits_the_total_norm_before_the_step():
    param = torch.nn.Parameter(torch.zeros(4))
    sgd = torch.optim.SGD([param], lr=1.0)
    clipped = optim.ClipGradients(sgd, [param], 10.0)
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


def planted(group: str, model: str, arch: str, seed: int, rankme: float, auc: float = 0.7, best_epoch: int = 5,
            flags: list | None = None, history: list | None = None) -> dict:  # fmt: skip
    """A finished sweep result with the fields summarize reads."""
    config = {**full_config({"model": model, "arch": arch, "dnn": [8]}), "seed": seed}
    return {
        "name": f"{group}-s{seed}", "group": group, "seed": seed, "status": "ok", "config": config,
        "dataset": {"name": "x", "path": "x", "hash": "h"}, "auc": auc, "logloss": 0.5, "metrics_split": "test",
        "valid_auc": auc, "rankme": rankme, "mean_ia": 2.0, "field_ia": [2.0], "best_epoch": best_epoch,
        "epochs_run": 8, "seconds": 1.0, "batch_rows": 100, "cov_spectrum": [1.0, 0.5],
        "flags": flags or [], "history": history or [],
    }  # fmt: skip


def curve(rankmes: list[float], aucs: list[float]) -> list[dict]:
    return [{"epoch": i + 1, "valid_auc": a, "valid_logloss": 0.5, "rankme": r, "mean_ia": 2.0}
            for i, (r, a) in enumerate(zip(rankmes, aucs, strict=True))]  # fmt: skip


def test_summary_pairs_seeds_gives_a_t_interval_sign_count_and_a_claim_per_entry():
    from dcollapse import sweep

    base = [10.0, 12.0, 8.0]
    up, down = [15.0, 19.2, 11.2], [9.0, 12.0, 6.0]  # +50%, +60%, +40% | -10%, 0%, -25%
    results = [planted("fm-none", "fm", "none", s, base[s], history=curve([10, 10], [0.6, 0.7])) for s in range(3)]
    results += [planted("fm-parallel", "fm", "parallel", s, up[s], history=curve([15, 20], [0.65, 0.7]))
                for s in range(3)]  # fmt: skip
    results += [planted("fm-stacked", "fm", "stacked", s, down[s]) for s in range(3)]
    summary = sweep.summarize(results)
    rows = {row["group"]: row for row in summary["groups"]}
    changes = np.array([0.5, 0.6, 0.4])
    half = 4.302652729911275 * changes.std(ddof=1) / math.sqrt(3)  # t(0.975, df 2)
    assert rows["fm-parallel"]["rankme_change"]["mean"] == pytest.approx(0.5)
    assert rows["fm-parallel"]["rankme_change_interval"] == pytest.approx([0.5 - half, 0.5 + half])
    assert (rows["fm-parallel"]["rankme_up_seeds"], rows["fm-parallel"]["paired_seeds"]) == (3, 3)
    assert rows["fm-parallel"]["claim"] == "held" and rows["fm-stacked"]["claim"] == "not held"
    assert rows["fm-none"]["claim"] is None
    over = rows["fm-parallel"]["over_training"]
    assert [o["signs"] for o in over] == ["++"] * 3 and over[0]["matched_auc"]["change"] == pytest.approx(1.0)
    parallel_line = next(line for line in summary["claims"] if line.startswith("fm-parallel"))
    assert "held: Δ RankMe +50% (95% t interval" in parallel_line and "up in 3/3 seeds" in parallel_line
    assert "at matched valid AUC +100% (up in 3/3)" in parallel_line and "s0 ++" in parallel_line
    assert "- fm-stacked: not held" in sweep.summary_markdown(summary, "t")


def test_summary_keeps_unreadable_runs_out_of_the_means_and_names_them():
    from dcollapse import sweep

    near = [{"flag": "near_chance", "reason": "best epoch 1 with valid AUC 0.510 (near chance)"}]
    results = [planted("fm-none", "fm", "none", s, 10.0) for s in range(3)]
    results += [
        planted("fm-parallel", "fm", "parallel", 0, 20.0),
        planted("fm-parallel", "fm", "parallel", 1, 8.0, auc=0.51, best_epoch=1, flags=near),
        planted("fm-parallel", "fm", "parallel", 2, 9.0, auc=0.60, best_epoch=2),  # 0.1 under the others' median
        planted("fm-parallel", "fm", "parallel", 3, 10.2, flags=[{"flag": "still_improving", "reason": "r"}]),
    ]
    summary = sweep.summarize(results)
    row = next(r for r in summary["groups"] if r["group"] == "fm-parallel")
    assert [ex["name"] for ex in row["excluded"]] == ["fm-parallel-s1", "fm-parallel-s2"]
    assert row["excluded"][1]["flags"][0]["flag"] == "below_other_seeds"
    assert row["rankme"]["mean"] == pytest.approx((20.0 + 10.2) / 2) and row["rankme"]["n"] == 2
    assert row["paired_seeds"] == 1 and row["claim"] == "not judged"  # seed 3 has no base of its own seed
    assert row["flags"]["fm-parallel-s3"] == ["still_improving"]  # shown, but kept in the means
    assert "left out of the means (cannot be read as collapse): fm-parallel-s1 (near_chance, below_other_seeds), " \
           "fm-parallel-s2 (below_other_seeds)" in summary["claims"][-1]  # fmt: skip
    mixed = sweep.summarize(
        [planted("fm-none", "fm", "none", s, 10.0) for s in range(2)]
        + [planted("fm-parallel", "fm", "parallel", s, v) for s, v in enumerate([14.0, 9.0])]
    )
    assert next(r for r in mixed["groups"] if r["group"] == "fm-parallel")["claim"] == "mixed"


def test_paper_grid_under_the_paper_recipe_has_the_papers_l2_and_both_crossnet_dnns():
    from dcollapse import sweep

    specs = {s.group: s.config for s in sweep.plan(sweep.load_grid("paper", "paper"), 1, {"recipe": "paper"})}
    assert len(specs) == 8 and all(c["recipe"] == "paper" and c["init"] == "xavier" for c in specs.values())
    assert specs["fm-parallel"]["l2_emb"] == 0.0 and specs["crossnet-none"]["l2_emb"] == 1e-5
    assert (
        specs["crossnet-stacked"]["activation"] == "identity" and specs["crossnet-stacked-relu"]["activation"] == "relu"
    )
    assert specs["fm-parallel"]["activation"] == "relu"
    default = {s.group: s.config for s in sweep.plan(sweep.load_grid("paper"), 1)}
    assert len(default) == 6 and default["fm-none"]["l2_emb"] == 5e-6 and default["fm-none"]["init"] == "torch"


def test_logloss_still_falling_at_the_last_epoch_is_a_flag_that_excludes():
    from dcollapse.reports import verdict

    history = [
        {"epoch": 1, "valid_auc": 0.7, "valid_logloss": 0.50},
        {"epoch": 2, "valid_auc": 0.71, "valid_logloss": 0.48},
    ]
    ckpt = {"history": history, "best_epoch": 2, "test": None, "meta": {}}
    assert [f["flag"] for f in verdict.run_flags(ckpt)] == ["still_improving", "logloss_falling"]
    history[1]["valid_logloss"] = 0.499
    assert [f["flag"] for f in verdict.run_flags(ckpt)] == ["still_improving"]
    assert verdict.seed_flags(3, 0.5, [0.7, 0.7]) == []  # a late best epoch is not judged against the seeds


def test_preprocess_warns_of_a_constant_train_field_and_reports_the_oov_share_of_valid_and_test(tmp_path):
    from dcollapse.data.preprocess import Options, preprocess

    train = ["label,shop,colour", *[f"{i % 2},s{i % 5},red" for i in range(200)]]
    test = ["label,shop,colour", *[f"{i % 2},{'s1' if i < 30 else 'new' + str(i)},red" for i in range(100)]]
    (tmp_path / "train.csv").write_text("\n".join(train) + "\n")
    (tmp_path / "test.csv").write_text("\n".join(test) + "\n")
    options = Options(format="csv", label="label", split_files=True, valid_frac=0.0)
    meta = preprocess([tmp_path / "train.csv", tmp_path / "test.csv"], tmp_path / "out", options)
    assert meta["oov_share"]["test"] == {"shop": pytest.approx(0.70), "colour": 0.0}  # 70 of 100 shops unseen
    notes = " | ".join(meta["notes"])
    assert "field colour is constant in the train split" in notes and "field shop" not in notes
    assert "over 20% of the rows map to the OOV id" in notes and "shop 70% (test)" in notes


def test_libfm_field_map_names_the_fields_and_bad_maps_are_one_line_errors(tmp_path):
    rows = [f"{i % 2} {i % 3}:1 {10 + i % 4}:1" for i in range(40)]
    (tmp_path / "d.fm").write_text("\n".join(rows) + "\n")
    fmap = tmp_path / "featindex.txt"
    fmap.write_text(
        "".join(f"weekday:{v}\t{v}\n" for v in range(3)) + "".join(f"city:c\u00e9{v}\t{10 + v}\n" for v in range(4))
    )
    out = tmp_path / "out"
    result = runner.invoke(app, ["preprocess", str(tmp_path / "d.fm"), "--format", "libfm", "--field-map", str(fmap),
                                 "--out", str(out), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    import json

    assert [f["name"] for f in json.loads((out / "meta.json").read_text())["fields"]] == ["weekday", "city"]
    fmap.write_text("weekday:0\t0\nweekday:1\t10\n")
    bad = runner.invoke(app, ["preprocess", str(tmp_path / "d.fm"), "--format", "libfm", "--field-map", str(fmap),
                              "--out", str(tmp_path / "bad")])  # fmt: skip
    assert bad.exit_code == 2 and "several positions" in bad.output and not (tmp_path / "bad").exists()
    fmap.write_text("weekday:0\t0\n")
    missing = runner.invoke(app, ["preprocess", str(tmp_path / "d.fm"), "--format", "libfm", "--field-map", str(fmap),
                                  "--out", str(tmp_path / "bad")])  # fmt: skip
    assert missing.exit_code == 2 and "token 2: index '10' is not in" in missing.output
