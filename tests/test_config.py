"""Typed configuration: one set of rules for the command line, --config TOML files and sweep grids; messages name
the option as the user wrote it; model-zoo aliases; "did you mean"; a fuzz test of TOML configs."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from _ctr_fixtures import write_tiny
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import dcollapse.optim as optim
import dcollapse.train as training
from dcollapse import config, sweep
from dcollapse.cli.app import app
from dcollapse.errors import UserError
from dcollapse.models.mlp import ACTIVATIONS, NORMS

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny(tmp_path_factory)


@pytest.fixture()
def no_training(monkeypatch):
    """Stop `dcollapse train` right after its options are checked: the config train() would get, or None."""
    seen: list[dict] = []

    def fake_train(data_dir, run_config, out, **kwargs):
        seen.append(run_config)
        raise UserError("stopped before training")

    monkeypatch.setattr(training, "train", fake_train)
    return seen


def test_defaults_and_their_types():
    c = config.full_config({})
    assert c == {key: config.default(key) for key in config.FIELDS}
    assert c["dnn"] == [400, 400, 400] and c["track"] == [] and c["emb_dim"] == 16 and c["lr"] == 1e-3
    assert config.full_config(c) == c  # a stored config passes unchanged
    assert config.MODEL_DEFAULTS == {key: c[key] for key in config.MODEL_KEYS}


def test_choice_names_match_their_implementations():
    assert config.ACTIVATIONS == tuple(ACTIVATIONS) and config.NORMS == tuple(NORMS)
    assert config.OPTIMIZERS == tuple(optim.OPTIMIZERS) == tuple(optim.SPARSE_OPTIMIZERS)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("emb_dim", "abc", "emb_dim must be an integer, not 'abc'"),
        ("emb_dim", True, "emb_dim must be an integer, not True"),
        ("emb_dim", 1e12, "emb_dim must be an integer, not 1000000000000.0"),
        ("emb_dim", 10**12, "emb_dim must be <= 65,536"),
        ("emb_dim", 0, "emb_dim must be >= 1, not 0"),
        ("epochs", 1.7, "epochs must be an integer, not 1.7"),
        ("lr", "fast", "lr must be a number, not 'fast'"),
        ("lr", math.nan, "lr must be a finite number, not nan"),
        ("lr", "inf", "lr must be a finite number, not inf"),
        ("lr", 0, "lr must be > 0, not 0"),
        ("l2_emb", -1e-3, "l2_emb must be >= 0"),
        ("dropout", 1, "dropout must be < 1, not 1.0"),
        ("dropout", "high", "dropout must be a number, not 'high'"),
        ("track", 5, "track must be a list like"),
        ("track", ["grokking"], "track (item 1) must be one of richness, not 'grokking'"),
        ("residual", "no", "residual must be true or false, not 'no'"),
        ("sparse_emb", 1, "sparse_emb must be true or false, not 1"),
        ("dnn", [64, "x"], "dnn (item 2) must be an integer, not 'x'"),
        ("dnn", [64, 0], "dnn (item 2) must be >= 1, not 0"),
        ("dnn", 64, "dnn must be a list like"),
        ("model", "xdeepfm", "model must be one of fm, crossnet, dot (or deepfm, "),
        ("optimizer", "lbfgs", "optimizer must be one of adam, adagrad, sgd, not 'lbfgs'"),
        ("device", 0, "device must be one of auto, cpu, cuda, not 0"),
        ("seed", -1, "seed must be >= 0"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_key(key, value, message):
    with pytest.raises(UserError) as info:
        config.full_config({key: value})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_text_values_follow_the_same_rules_as_typed_ones():
    text = {"emb_dim": "8", "lr": "0.01", "dnn": "64, 32", "track": "richness", "dropout": "0", "seed": " 3 "}
    typed = {"emb_dim": 8, "lr": 0.01, "dnn": [64, 32], "track": ["richness"], "dropout": 0, "seed": 3}
    assert config.full_config(text) == config.full_config(typed)
    assert config.full_config({"dnn": "64"})["dnn"] == [64]  # not [6, 4]
    assert config.full_config({"dnn": "none"})["dnn"] == [] and config.full_config({"dnn": []})["dnn"] == []
    assert isinstance(config.full_config({"dropout": 0})["dropout"], float)


def test_choices_in_any_case_are_stored_in_lower_case():
    c = config.full_config({"model": "DeepFM", "activation": "ReLU", "optimizer": "Adam", "track": ["Richness"]})
    assert (c["model"], c["arch"], c["activation"], c["optimizer"], c["track"]) == (
        "fm",
        "parallel",
        "relu",
        "adam",
        ["richness"],
    )


def test_arch_with_a_dnn_needs_widths():
    with pytest.raises(UserError, match="arch parallel needs a DNN"):
        config.full_config({"arch": "parallel", "dnn": []})
    with pytest.raises(UserError, match=re.escape("arch (from model nfm) stacked needs a DNN")):
        config.full_config({"model": "nfm", "dnn": "none"})
    assert config.full_config({"model": "NFM", "arch": "Stacked"})["arch"] == "stacked"


@pytest.mark.parametrize(("alias", "model", "arch"), [(k, *v) for k, v in config.MODEL_ALIASES.items()])
def test_model_zoo_aliases_set_model_and_arch(alias, model, arch):
    c = config.full_config({"model": alias})
    assert (c["model"], c["arch"]) == (model, arch)
    assert config.full_config({"model": alias, "arch": arch}) == c


def test_an_alias_and_a_contradicting_arch_are_refused_but_a_later_layer_wins():
    with pytest.raises(UserError, match="--model deepfm means model fm with arch parallel; it contradicts --arch"):
        config.full_config(
            config.Options({"model": "deepfm", "arch": "stacked"}, {"model": "--model", "arch": "--arch"})
        )
    c = config.full_config(config.merged({"model": "deepfm"}, {"arch": "stacked"}))  # file, then command line
    assert (c["model"], c["arch"]) == ("fm", "stacked")


@pytest.mark.parametrize(
    ("key", "value", "near"),
    [("model", "deepfn", "deepfm"), ("model", "dcn2", "dcnv2"), ("optimizer", "adamw", "adam"),
     ("activation", "rellu", "relu"), ("norm", "layernorm", "layer"), ("arch", "paralel", "parallel"),
     ("emb-dim", 4, "emb_dim")],
)  # fmt: skip
def test_near_misses_get_a_did_you_mean(key, value, near):
    with pytest.raises(UserError, match=f"did you mean '{near}'"):
        config.full_config({key: value})


def test_unknown_far_keys_get_no_guess():
    with pytest.raises(UserError) as info:
        config.full_config({"zzz": 1})
    assert str(info.value) == "zzz: unknown option"


def test_toml_keys_with_dashes_or_underscores_and_errors_with_file_and_line(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('# a comment\nemb-dim = 8\nbatch_size = 512\n"l2-emb" = 1e-5\ndnn = "64"\nresidual = "no"\n')
    options = config.read_config_file(path)
    assert options["emb_dim"] == 8 and options.name("emb_dim") == f"{path}:2: emb-dim"
    with pytest.raises(UserError) as info:
        config.full_config(options)
    assert str(info.value) == f"{path}:6: residual must be true or false, not 'no'"
    path.write_text("emb-dim = 8\nemb_dim = 9\n")
    with pytest.raises(UserError, match="emb_dim is given twice"):
        config.read_config_file(path)
    path.write_text("emb_dim = 8\n\nbatchsize = 3\n")
    with pytest.raises(UserError, match=re.escape(f"{path}:3: batchsize: unknown option (did you mean 'batch_size'?)")):
        config.full_config(config.read_config_file(path))


def cli_error(result) -> str:
    """The one stderr line of a refused command (asserting there is exactly one and no traceback)."""
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--emb-dim", "abc"], "--emb-dim must be an integer, not 'abc'"),
        (["--emb-dim", "1e12"], "--emb-dim must be an integer, not '1e12'"),
        (["--epochs", "1.7"], "--epochs must be an integer, not '1.7'"),
        (["--lr", "nan"], "--lr must be a finite number, not nan"),
        (["--lr", "fast"], "--lr must be a number, not 'fast'"),
        (["--dropout", "1"], "--dropout must be < 1"),
        (["--dnn", "4,x"], "--dnn (item 2) must be an integer, not 'x'"),
        (["--track", "5"], "--track (item 1) must be one of richness"),
        (["--model", "deepfn"], "--model must be one of fm, crossnet, dot (or deepfm,"),
        (["--model", "deepfm", "--arch", "stacked"], "--model deepfm means model fm with arch parallel"),
        (["--optimizer", "adamw"], "--optimizer must be one of adam, adagrad, sgd, not 'adamw' (did you mean 'adam'?)"),
        (["--device", "gpu"], "--device must be one of auto, cpu, cuda"),
    ],
)
def test_cli_bad_values_exit_2_with_one_line_naming_the_flag(tiny, tmp_path, no_training, args, message):
    out = tmp_path / "run.pt"
    line = cli_error(runner.invoke(app, ["train", str(tiny), "--out", str(out), *args]))
    assert message in line
    assert not no_training and not out.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('dropout = "high"\n', ":1: dropout must be a number, not 'high'"),
        ("emb_dim = true\n", ":1: emb_dim must be an integer, not True"),
        ("\nepochs = 1.7\n", ":2: epochs must be an integer, not 1.7"),
        ('lr = "fast"\n', ":1: lr must be a number"),
        ("track = 5\n", ":1: track must be a list"),
        ('residual = "no"\n', ":1: residual must be true or false"),
        ("emb-dim = 1e12\n", ":1: emb-dim must be an integer"),
        ("emb_dim = 4\nmodle = 'fm'\n", ":2: modle: unknown option (did you mean 'model'?)"),
        ("emb_dim = \n", "invalid TOML"),
        ("[model]\nname = 'fm'\n", ": model must be one of"),
    ],
)
def test_cli_bad_config_files_exit_2_with_file_and_line(tiny, tmp_path, no_training, content, message):
    path = tmp_path / "run.toml"
    path.write_text(content)
    line = cli_error(runner.invoke(app, ["train", str(tiny), "--config", str(path), "--out", str(tmp_path / "r.pt")]))
    assert str(path) in line and message in line
    assert not no_training


def test_cli_config_path_that_is_a_directory_binary_or_missing(tiny, tmp_path, no_training):
    binary = tmp_path / "garbage.toml"
    binary.write_bytes(bytes(range(256)) * 4)
    for path, message in [(tmp_path, "is a directory"), (binary, "not UTF-8"), (tmp_path / "none.toml", "no such")]:
        line = cli_error(runner.invoke(app, ["train", str(tiny), "--config", str(path), "--out", str(tmp_path / "r")]))
        assert str(path) in line and message in line
    assert not no_training


def test_cli_command_line_wins_over_the_config_file(tiny, tmp_path, no_training):
    path = tmp_path / "run.toml"
    path.write_text('model = "deepfm"\nemb-dim = 8\ndnn = [32]\n')
    args = [
        "train",
        str(tiny),
        "--config",
        str(path),
        "--emb-dim",
        "4",
        "--arch",
        "stacked",
        "--out",
        str(tmp_path / "r"),
    ]
    runner.invoke(app, args)
    (seen,) = no_training
    assert (seen["model"], seen["arch"], seen["emb_dim"], seen["dnn"]) == ("fm", "stacked", 4, [32])


@pytest.mark.slow
def test_cli_model_zoo_alias_trains_that_model(tiny, tmp_path):
    out = tmp_path / "nfm.pt"
    args = ["train", str(tiny), "--model", "nfm", "--dnn", "8", "--emb-dim", "4", "--epochs", "1", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    from dcollapse import checkpoint

    stored = checkpoint.load(out)["config"]
    assert (stored["model"], stored["arch"], stored["dnn"]) == ("fm", "stacked", [8])


def test_train_help_is_grouped_lists_the_aliases_and_has_no_type_noise():
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = result.output
    for panel in config.PANELS:
        assert f"─ {panel} " in text, panel
    row = {flag: text.index(f"│ {flag} ") for flag in ("--emb-dim", "--dropout", "--threads", "--out", "--lr")}
    assert text.index("─ Model ") < row["--emb-dim"] < text.index("─ DNN ") < row["--dropout"]
    assert text.index("─ Optimisation ") < row["--lr"] < text.index("─ Checkpoints ") < row["--out"]
    assert text.index("─ Speed ") < row["--threads"]
    assert all(alias in text for alias in config.MODEL_ALIASES)
    assert "<str>" not in text and "<int>" not in text and "<float>" not in text
    assert [line for line in text.splitlines() if "<bool>" in line and "--help" not in line] == []
    assert "DATA_DIR" in text and "CHECKPOINT" in text


def test_sweep_overrides_follow_the_config_rules(tmp_path):
    result = runner.invoke(app, ["sweep", str(tmp_path), "--out", str(tmp_path / "runs"), "--emb-dim", "1.5"])
    assert "--emb-dim must be an integer, not '1.5'" in cli_error(result)
    result = runner.invoke(app, ["sweep", str(tmp_path), "--out", str(tmp_path / "runs"), "--grid", "papr"])
    assert "did you mean 'paper'" in cli_error(result)


def test_sweep_grid_values_are_checked_like_train_options(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text('[base]\nemb-dim = 4\ndnn = "64"\n\n[runs.deepfm]\nmodel = "deepfm"\n\n[runs.nfm]\nmodel = "nfm"\n')
    specs = sweep.plan(sweep.load_grid(str(grid)), seeds=1)
    assert [(s.config["model"], s.config["arch"], s.config["dnn"], s.config["emb_dim"]) for s in specs] == [
        ("fm", "parallel", [64], 4),
        ("fm", "stacked", [64], 4),
    ]
    grid.write_text('[base]\nemb_dim = 4\n\n[runs.x]\nmodel = "fm"\nresidual = "no"\n')
    with pytest.raises(UserError, match=re.escape(f"{grid}:6: runs.x.residual must be true or false, not 'no'")):
        sweep.plan(sweep.load_grid(str(grid)), seeds=1)
    grid.write_text("[base]\nepochs = 1.5\n\n[runs.x]\nmodel = 'fm'\n")
    with pytest.raises(UserError, match=re.escape(f"{grid}:2: base.epochs must be an integer, not 1.5")):
        sweep.plan(sweep.load_grid(str(grid)), seeds=1)


# --- fuzz: random TOML values for each key -------------------------------------------------------------------------

SCALARS = (
    st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.booleans()
    | st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
    | st.sampled_from(["fm", "deepfm", "none", "64,64", "richness", "adam", "parallel", "[/]", "1e9", "nan"])
)
VALUES = SCALARS | st.lists(SCALARS, max_size=4) | st.dictionaries(st.sampled_from(["a", "b"]), SCALARS, max_size=2)
KEYS = st.sampled_from([*config.FIELDS, *(k.replace("_", "-") for k in config.FIELDS), "bogus", "emb dim"])


def toml_value(value) -> str:
    """``value`` written as a TOML value (inline tables for dicts)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return str(value)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(options=st.dictionaries(KEYS, VALUES, min_size=1, max_size=4))
@pytest.mark.slow
def test_fuzz_toml_configs_exit_0_or_2_with_one_line(tiny, tmp_path, no_training, options):
    path = tmp_path / "fuzz.toml"
    path.write_text("".join(f"{json.dumps(key)} = {toml_value(value)}\n" for key, value in options.items()))
    no_training.clear()
    line = cli_error(runner.invoke(app, ["train", str(tiny), "--config", str(path), "--out", str(tmp_path / "f.pt")]))
    if no_training:  # accepted: what train() got is a complete, valid config
        (run_config,) = no_training
        assert line == "error: stopped before training" and config.full_config(run_config) == run_config
    else:
        assert str(path) in line or "contradicts" in line or "needs a DNN" in line, line


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(base=st.dictionaries(KEYS, VALUES, max_size=3), run=st.dictionaries(KEYS, VALUES, max_size=3))
def test_fuzz_sweep_grids_plan_or_one_line_error(tmp_path, base, run):
    grid = tmp_path / "grid.toml"
    table = "".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in base.items())
    entry = "".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in run.items())
    grid.write_text(f"[base]\n{table}\n[runs.x]\n{entry}")
    try:
        specs = sweep.plan(sweep.load_grid(str(grid)), seeds=1)
    except UserError as exc:
        assert "\n" not in str(exc) and str(exc)
    else:
        assert all(config.full_config(spec.config) == spec.config for spec in specs)


def test_eval_split_near_miss(tmp_path):
    line = cli_error(runner.invoke(app, ["eval", str(tmp_path / "run.pt"), "--split", "vaild"]))
    assert "--split must be one of train, valid, test, not 'vaild' (did you mean 'valid'?)" in line


def test_resume_refuses_a_changed_option_named_as_written(tiny, tmp_path):
    out = tmp_path / "run.pt"
    assert runner.invoke(app, ["train", str(tiny), "--emb-dim", "4", "--epochs", "1", "--out", str(out)]).exit_code == 0
    path = tmp_path / "more.toml"
    path.write_text("epochs = 2\nemb-dim = 8\n")
    line = cli_error(runner.invoke(app, ["train", "--resume", str(out), "--config", str(path)]))
    assert line.endswith(f"--resume keeps the run's settings; cannot change {path}:2: emb-dim")
    path.write_text("epochs = 2\nemb-dim = 4\nmodel = 'FM'\n")  # the same settings, spelled otherwise
    result = runner.invoke(app, ["train", "--resume", str(out), "--config", str(path)])
    assert result.exit_code == 0, result.output


def test_a_command_line_only_option_in_a_config_file_says_so(tiny, tmp_path, no_training):
    path = tmp_path / "run.toml"
    path.write_text('emb_dim = 4\nout = "run.pt"\n')
    line = cli_error(runner.invoke(app, ["train", str(tiny), "--config", str(path), "--out", str(tmp_path / "r")]))
    assert line == f"error: {path}:2: out: --out is given on the command line, not in a file"
