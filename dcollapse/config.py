"""Typed configuration of a CTR training run: :class:`ModelConfig` and :class:`TrainConfig`, checked in one place.

Every option of a run's config (what ``dcollapse train`` stores in a checkpoint; not the command-line-only --out,
--resume, --threads ...) is a field of one of the two dataclasses: its type, default, allowed values, bounds, help
text and help panel live there and nowhere else. The command line (``cli/train.py`` builds its options
from these fields), ``--config`` TOML files and sweep grids all end in :func:`full_config`, which checks each value
against its field and returns the plain dict stored in checkpoints (tuples as lists), so a config has one spelling
on disk and one set of rules.

Values arrive as :class:`Options`: a dict by config key (``emb_dim``) that also remembers how the user wrote each
key (``--emb-dim``, or ``run.toml:3: emb-dim``), so an error names the option the way the user spelled it. Text
values (from the command line) are parsed by the same rules as TOML values: ``--emb-dim 8`` and ``emb_dim = 8``
pass, ``emb_dim = true``, ``epochs = 1.7``, ``lr = nan`` and ``residual = "no"`` do not.

Why dataclasses and not pydantic: the rules are a few types with bounds, and the messages have to name the option
as the user wrote it (a command-line flag, a TOML key with its file and line) in one line; with pydantic we would
translate its error locations and wording back to ours anyway, and the checkpoint format stays a plain dict. One
checking function over the fields is shorter than that translation and has no dependency.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dcollapse.errors import UserError
from dcollapse.io import read_toml

# Model-zoo names -> the (model, arch) they mean here. DCN and DCNv2 both use DCNv2's full-matrix cross layers.
MODEL_ALIASES: dict[str, tuple[str, str]] = {
    "deepfm": ("fm", "parallel"),
    "nfm": ("fm", "stacked"),
    "dcn": ("crossnet", "parallel"),
    "dcnv2": ("crossnet", "parallel"),
    "dcnv2-stacked": ("crossnet", "stacked"),
    "dlrm": ("dot", "stacked"),
    "ipnn": ("dot", "stacked"),
    "pnn": ("dot", "stacked"),
}
# The names of choices whose implementations live elsewhere (tests hold the two lists together): this module stays
# free of torch, so the command line starts without importing it.
TRACKABLE = ("richness",)  # dcollapse.evaluation.collapse_snapshot
OPTIMIZERS = ("adam", "adagrad", "sgd")  # dcollapse.optim.OPTIMIZERS
ACTIVATIONS = ("relu", "gelu", "identity")  # dcollapse.models.mlp.ACTIVATIONS
NORMS = ("none", "batch", "layer")  # dcollapse.models.mlp.NORMS
MONITORS = ("auc", "logloss", "auc-logloss")  # dcollapse.train.monitor_score
# --recipe NAME -> the values it gives options the user did not set; "activation" only where the backbone is
# CrossNet (the paper's DCNv2 code builds its MLPs with hidden_activations=None, its FM code with ReLU).
RECIPES: dict[str, dict[str, Any]] = {
    "default": {},
    "paper": {"init": "xavier", "lr_decay": 0.1, "clip_norm": 10.0, "crossnet_activation": "identity"},
}


@dataclass(frozen=True)
class Rule:
    """How one option is checked and shown: allowed ``choices`` (for text), bounds ``low <= value <= high`` (for
    numbers and each list item; ``low_open`` / ``high_open`` make a bound strict), its ``help`` text, the ``--help``
    ``panel`` it is listed in and the ``metavar`` shown there."""

    help: str
    panel: str
    metavar: str = ""
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False


def option(default: Any, help: str, panel: str, metavar: str = "", **rule: Any) -> Any:
    """A dataclass field with its :class:`Rule`."""
    return field(default=default, metadata={"rule": Rule(help, panel, metavar, **rule)})


# The --help panels of `dcollapse train`, in their order there.
DATA, MODEL, DNN, OPTIMISATION, CHECKPOINTS, SPEED = "Data", "Model", "DNN", "Optimisation", "Checkpoints", "Speed"
PANELS = (DATA, MODEL, DNN, OPTIMISATION, CHECKPOINTS, SPEED)
ALIAS_HELP = ", ".join(f"{name} = {model} {arch}" for name, (model, arch) in MODEL_ALIASES.items())


@dataclass(frozen=True)
class ModelConfig:
    """The model: field embeddings [sum V_f, emb_dim * num_sets] -> interaction -> DNN placement -> logit."""

    model: str = option(
        "fm", f"Interaction: fm | crossnet | dot, or a model-zoo name ({ALIAS_HELP}).", MODEL, "NAME",
        choices=("fm", "crossnet", "dot"),
    )  # fmt: skip
    arch: str = option("none", "DNN placement: none | parallel | stacked.", MODEL, "NAME",
                       choices=("none", "parallel", "stacked"))  # fmt: skip
    style: str = option("paper", "paper (the source paper's code) | textbook.", MODEL, "NAME",
                        choices=("paper", "textbook"))  # fmt: skip
    emb_dim: int = option(16, "Embedding size per field (per set).", MODEL, "INT", low=1, high=65_536)
    num_sets: int = option(1, "Multi-embedding: independent embedding sets.", MODEL, "INT", low=1, high=64)
    cross_layers: int = option(3, "CrossNet layers.", MODEL, "INT", low=1, high=64)
    cross_rank: int = option(0, "CrossNet weight rank, 0 = full.", MODEL, "INT", low=0, high=65_536)
    dnn: tuple[int, ...] = option(
        (400, 400, 400), "DNN hidden widths, comma-separated (none = no hidden layer).", DNN, "W,W,...",
        low=1, high=1_048_576,
    )  # fmt: skip
    activation: str = option("relu", "relu | gelu | identity (a linear DNN).", DNN, "NAME",
                             choices=ACTIVATIONS)  # fmt: skip
    norm: str = option("none", "DNN normalisation: none | batch | layer.", DNN, "NAME", choices=NORMS)
    dropout: float = option(0.0, "DNN dropout probability, in [0, 1).", DNN, "P", low=0.0, high=1.0, high_open=True)
    residual: bool = option(False, "Skip connections in the DNN.", DNN)
    init: str = option(
        "torch", "Weights of every nn.Linear (DNN, cross layers, head): torch (PyTorch's default) | xavier "
        "(xavier_normal_, zero bias: FuxiCTR's reset_parameters).", MODEL, "NAME", choices=("torch", "xavier"),
    )  # fmt: skip


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation: epochs of shuffled batches, early stopping on the valid AUC, per-epoch snapshots."""

    epochs: int = option(100, "Maximum epochs.", OPTIMISATION, "INT", low=1, high=1_000_000)
    batch_size: int = option(1024, "Training batch size.", OPTIMISATION, "INT", low=1, high=1 << 24)
    lr: float = option(1e-3, "Learning rate.", OPTIMISATION, "FLOAT", low=0.0, low_open=True)
    optimizer: str = option("adam", "adam | adagrad | sgd.", OPTIMISATION, "NAME", choices=OPTIMIZERS)
    l2_emb: float = option(
        0.0, "L2 penalty on the embedding tables (with --sparse-emb: on the rows of each batch only).",
        OPTIMISATION, "FLOAT", low=0.0,
    )  # fmt: skip
    patience: int = option(2, "Early stopping: epochs without a better --monitor, 0 = off.", OPTIMISATION, "INT",
                           low=0, high=1_000_000)  # fmt: skip
    monitor: str = option(
        "auc", "What picks the best epoch and stops training, on valid: auc | logloss (lower is better) | "
        "auc-logloss (AUC minus logloss, the paper's Avazu configs).", OPTIMISATION, "NAME", choices=MONITORS,
    )  # fmt: skip
    lr_decay: float = option(
        1.0, "Multiply the learning rate by this after every epoch without a better --monitor, never below 1e-6 "
        "(FuxiCTR's reduce_lr_on_plateau: 0.1); 1 = off.", OPTIMISATION, "FLOAT", low=0.0, high=1.0, low_open=True,
    )  # fmt: skip
    clip_norm: float = option(
        0.0, "Clip the gradient norm of all parameters to this before every step (FuxiCTR: 10); 0 = off.",
        OPTIMISATION, "FLOAT", low=0.0,
    )  # fmt: skip
    recipe: str = option(
        "default", "default | paper: the source paper's FuxiCTR conventions for every option not given: "
        "--init xavier, --lr-decay 0.1, --clip-norm 10, and CrossNet DNNs with no hidden activation "
        "(--activation identity).", OPTIMISATION, "NAME", choices=tuple(RECIPES),
    )  # fmt: skip
    seed: int = option(0, "Random seed (same seed and --threads, same run on CPU).", OPTIMISATION, "INT",
                       low=0, high=2**32 - 1)  # fmt: skip
    sparse_emb: bool = option(
        False,
        "Sparse table gradients: update only the embedding rows each batch reads. Pays only on large tables: "
        "on one CPU thread (FM, batch 4096, 39 fields) it was slower than the default up to about 3e5 table rows and "
        "1.3x / 3.5x faster at 1e6 / 3e6; --fused-update beat it at every size (docs/benchmarks.md). "
        "With --optimizer adam the tables use lazy Adam (torch SparseAdam: moments of absent rows are not decayed), "
        "which is NOT the paper's dense Adam; adagrad and sgd give the dense result. One process only. "
        "Default: dense.",
        SPEED,
    )
    fused_update: bool = option(
        False,
        "Update the embedding tables inside the backward, only the rows each batch reads, with no table gradient "
        "(exact for sgd and adagrad, lazy Adam with adam, like --sparse-emb). Not with --sparse-emb, --compile or "
        "--nproc. Default: off.",
        SPEED,
    )
    compile: bool = option(
        False,
        "torch.compile the training step (Inductor's fused C++ loops on the CPU; needs a C++ compiler, g++). It "
        "compiles once, for the batch size, in the first steps (seconds to a minute); an epoch's shorter last batch "
        "runs eagerly. Whether it pays depends on the model, batch size and machine: on the Criteo-shaped CPU "
        "benchmark it did for FM at batch 4096, not on tiny tables, and at batch 1024 the runs disagreed "
        "(docs/benchmarks.md); time yours with scripts/bench_train.py. Same math, float rounding may differ. "
        "Default: off.",
        SPEED,
    )
    device: str = option("auto", "cpu | cuda | auto.", SPEED, "NAME", choices=("auto", "cpu", "cuda"))
    chunk_rows: int = option(
        0, "Stream the train split from Parquet in chunks of this many rows (for splits larger than memory); "
        "0 = load it whole.", DATA, "INT", low=0, high=2**31 - 1,
    )  # fmt: skip
    snapshot_rows: int = option(
        50_000, "Valid rows in the per-epoch RankMe batch.", CHECKPOINTS, "INT", low=1, high=1 << 24
    )
    track: tuple[str, ...] = option(
        (), "Extra per-epoch diagnostics in the history, comma-separated: richness (D_LR and NC1).", CHECKPOINTS,
        "NAMES", choices=TRACKABLE,
    )  # fmt: skip


CONFIGS = (ModelConfig, TrainConfig)


def config_fields() -> dict[str, tuple[dataclasses.Field, type]]:
    """Every config key -> (its dataclass field, its type), model options first."""
    return {f.name: (f, typing.get_type_hints(cls)[f.name]) for cls in CONFIGS for f in dataclasses.fields(cls)}


FIELDS = config_fields()
MODEL_KEYS = tuple(f.name for f in dataclasses.fields(ModelConfig))


def rule(key: str) -> Rule:
    """The :class:`Rule` of config key ``key``."""
    return FIELDS[key][0].metadata["rule"]


def default(key: str) -> Any:
    """The default value of config key ``key`` (tuples as lists, as stored)."""
    value = FIELDS[key][0].default
    return list(value) if isinstance(value, tuple) else value


def flag(key: str) -> str:
    """``emb_dim`` -> ``--emb-dim``."""
    return "--" + key.replace("_", "-")


class Options(dict[str, Any]):
    """Option values by config key (``emb_dim``) from one or more sources, with ``names[key]``: how the user wrote
    the key (``--emb-dim``, ``run.toml:3: emb-dim``) for messages. A plain dict works wherever Options do; its keys
    are then named as they are."""

    def __init__(self, values: Mapping[str, Any] | None = None, names: Mapping[str, str] | None = None) -> None:
        super().__init__(values or {})
        self.names = {key: (names or {}).get(key, key) for key in self}

    def name(self, key: str) -> str:
        return self.names.get(key, key)


def names_of(options: Mapping[str, Any]) -> Mapping[str, str]:
    """How the keys of ``options`` were written (empty for a plain dict: keys name themselves)."""
    return options.names if isinstance(options, Options) else {}


def merged(*layers: Mapping[str, Any]) -> Options:
    """The options of ``layers`` in order, later layers winning; each layer's model-zoo alias is expanded first
    (``model = "deepfm"`` sets model fm and arch parallel in that layer)."""
    values: dict[str, Any] = {}
    names: dict[str, str] = {}
    for layer in layers:
        layer = expand_alias(layer)
        values.update(layer)
        names.update({key: layer.name(key) for key in layer})
    return Options(values, names)


def expand_alias(options: Mapping[str, Any]) -> Options:
    """``options`` with a model-zoo name in ``model`` replaced by its model and arch; an ``arch`` given beside it
    that contradicts the alias raises a UserError."""
    options = options if isinstance(options, Options) else Options(options)
    model = options.get("model")
    if not isinstance(model, str) or model.lower() not in MODEL_ALIASES:
        return options
    backbone, arch = MODEL_ALIASES[model.lower()]
    given = options.get("arch", arch)
    if not isinstance(given, str) or given.lower() != arch:
        raise UserError(
            f"{options.name('model')} {model} means model {backbone} with arch {arch}; it contradicts "
            f"{options.name('arch')} {options['arch']} (give --model {backbone} --arch {options['arch']})"
        )
    names = {**options.names, "arch": options.names.get("arch", f"arch (from {options.name('model')} {model})")}
    return Options({**options, "model": backbone, "arch": arch}, names)


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the choice nearest to ``value``, or ``""`` when none is near."""
    near = difflib.get_close_matches(value.lower(), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {near[0]!r}?)" if near else ""


def choice_error(name: str, value: Any, choices: Iterable[str], aliases: Iterable[str] = ()) -> UserError:
    """The one-line error for ``value`` not among ``choices`` (or ``aliases``) of option ``name``, with a "did you
    mean" for a near miss."""
    choices, aliases = list(choices), list(aliases)
    hint = did_you_mean(value, choices + aliases) if isinstance(value, str) else ""
    also = f" (or {', '.join(aliases)})" if aliases else ""
    return UserError(f"{name} must be one of {', '.join(choices)}{also}, not {value!r}{hint}")


def full_config(options: Mapping[str, Any]) -> dict[str, Any]:
    """Every option (model and training) of ``options``, defaults filled in, each value checked against its field:
    the plain dict a checkpoint stores. Any bad value raises a one-line UserError naming the option as written."""
    options = expand_alias(options)
    unknown = [key for key in options if key not in FIELDS]
    if unknown:
        raise UserError("; ".join(f"{options.name(key)}: unknown option{did_you_mean(key, FIELDS)}" for key in unknown))
    config = {key: check(key, options[key], options.name(key)) if key in options else default(key) for key in FIELDS}
    config |= recipe_values(config, options)
    if config["arch"] != "none" and not config["dnn"]:
        raise UserError(
            f"{options.name('arch')} {config['arch']} needs a DNN: give hidden widths, e.g. --dnn 400,400,400 "
            "(dnn = [400, 400, 400])"
        )
    return config


def recipe_values(config: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """The values ``config["recipe"]`` (see :data:`RECIPES`) gives the options not in ``given``."""
    values = dict(RECIPES[config["recipe"]])
    activation = values.pop("crossnet_activation", None)
    if activation is not None and config["model"] == "crossnet":
        values["activation"] = activation
    return {key: value for key, value in values.items() if key not in given}


def model_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """The :class:`ModelConfig` keys of a config dict (checked and with defaults), without the training ones."""
    given = Options({k: v for k, v in config.items() if k in MODEL_KEYS}, names_of(config))
    return {key: value for key, value in full_config(given).items() if key in MODEL_KEYS}


MODEL_DEFAULTS = model_options({})


def check(key: str, value: Any, name: str) -> Any:
    """``value`` of config key ``key`` parsed (text from the command line) and checked; ``name``: for messages."""
    kind, r = FIELDS[key][1], rule(key)
    if kind is bool:
        if not isinstance(value, bool):
            raise UserError(f"{name} must be true or false, not {value!r}")
        return value
    if kind is str:  # a choice, in any case (DeepFM, ReLU)
        if not isinstance(value, str) or value.lower() not in r.choices:
            raise choice_error(name, value, r.choices, MODEL_ALIASES if key == "model" else ())
        return value.lower()
    if kind in (int, float):
        return bounded(number(value, kind, name), r, name)
    item = typing.get_args(kind)[0]  # tuple[int, ...] or tuple[str, ...]: a TOML list or comma-separated text
    if isinstance(value, str):
        value = [] if value.strip().lower() in ("", "none") else [part.strip() for part in value.split(",")]
    elif not isinstance(value, list | tuple):
        example = "400,400,400 or [400, 400, 400]" if item is int else '"richness" or ["richness"]'
        raise UserError(f"{name} must be a list like {example}, not {value!r}")
    if item is int:
        return [bounded(number(v, int, f"{name} (item {i + 1})"), r, f"{name} (item {i + 1})")
                for i, v in enumerate(value)]  # fmt: skip
    bad = [v for v in value if not isinstance(v, str) or v.lower() not in r.choices]
    if bad:
        raise choice_error(f"{name} (item {list(value).index(bad[0]) + 1})", bad[0], r.choices)
    return list(dict.fromkeys(v.lower() for v in value))


def number(value: Any, kind: type, name: str) -> int | float:
    """``value`` as an int or a finite float (``kind``); text is parsed, booleans and fractions for ints refused."""
    what = "an integer" if kind is int else "a number"
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text) if kind is int else float(text)
        except ValueError:
            raise UserError(f"{name} must be {what}, not {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and not isinstance(value, int)):
        raise UserError(f"{name} must be {what}, not {value!r}")
    if not math.isfinite(value):
        raise UserError(f"{name} must be a finite number, not {value!r}")
    return kind(value)


def bounded(value: int | float, r: Rule, name: str) -> int | float:
    """``value`` when inside the bounds of ``r``, else a UserError saying which."""
    if r.low is not None and (value <= r.low if r.low_open else value < r.low):
        raise UserError(f"{name} must be {'>' if r.low_open else '>='} {r.low:g}, not {value!r}")
    if r.high is not None and (value >= r.high if r.high_open else value > r.high):
        raise UserError(f"{name} must be {'<' if r.high_open else '<='} {r.high:,g}, not {value!r}")
    return value


KEY = r"""(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')"""
KEY_LINE = re.compile(rf"^\s*({KEY}(?:\s*\.\s*{KEY})*)\s*=")
TABLE_LINE = re.compile(rf"^\s*\[\[?\s*({KEY}(?:\s*\.\s*{KEY})*)\s*\]\]?")


def toml_key_lines(text: str) -> dict[tuple[str, ...], int]:
    """1-based line of every key of a TOML document, by its full dotted path (``("runs", "x", "dnn")``); lines
    inside multi-line strings or arrays may be misread as keys, which only costs a wrong line number."""
    lines: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    for number_, line in enumerate(text.splitlines(), start=1):
        if match := TABLE_LINE.match(line):
            table = split_key(match.group(1))
            lines.setdefault(table, number_)
        elif match := KEY_LINE.match(line):
            lines.setdefault(table + split_key(match.group(1)), number_)
    return lines


def split_key(dotted: str) -> tuple[str, ...]:
    return tuple(part.strip().strip("\"'") for part in re.findall(KEY, dotted))


def toml_options(path: Path, table: Mapping[str, Any], where: tuple[str, ...] = ()) -> Options:
    """The options of a TOML ``table`` (read from ``path``, at dotted path ``where`` in it): keys with dashes or
    underscores, each named in messages as ``path:line: key`` with the key as written."""
    try:
        lines = toml_key_lines(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):  # read once already by read_toml; a line number is only a help
        lines = {}
    values: dict[str, Any] = {}
    names: dict[str, str] = {}
    for written, value in table.items():
        key = written.replace("-", "_")
        if key in values:
            raise UserError(f"{path}: {written} is given twice (as {names[key].rsplit(': ', 1)[-1]} too)")
        line = lines.get((*where, written))
        values[key] = value
        names[key] = f"{path}{f':{line}' if line else ''}: {'.'.join((*where, written))}"
    return Options(values, names)


def read_config_file(path: Path) -> Options:
    """The options of a ``--config`` TOML file (a flat table of option = value)."""
    return toml_options(path, read_toml(path, "config"))
