"""dcollapse.sources: embedding tables from every supported file kind and library layout.

Fixture checkpoints are built here from small modules that reproduce each library's parameter names and shapes
(checked against the libraries' own sources); per-field IA / RankMe are compared with a float64 NumPy SVD.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dcollapse.errors import UserError
from dcollapse.metrics.collapse import field_spectra
from dcollapse.sources import TableSource, read_field_map, read_tables

DIM = 6


def lowrank(rows: int, rank: int, seed: int) -> torch.Tensor:
    """[rows, DIM] float32 of rank ``rank`` plus a little noise: a table with a known, uneven spectrum."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, rank, generator=g) @ torch.randn(rank, DIM, generator=g)) + 1e-3 * torch.randn(
        rows, DIM, generator=g
    )


def embedding(rows: int, rank: int, seed: int, bag: bool = False) -> nn.Module:
    module = nn.EmbeddingBag(rows, DIM) if bag else nn.Embedding(rows, DIM)
    with torch.no_grad():
        module.weight.copy_(lowrank(rows, rank, seed))
    return module


def numpy_metrics(block: np.ndarray) -> tuple[float, float]:
    """(IA, RankMe) of one field's rows by float64 NumPy SVD: the independent reference."""
    s = np.linalg.svd(block.astype(np.float64), compute_uv=False)
    p = s / s.sum() + 1e-7
    return float(s.sum() / s.max()), float(np.exp(-(p * np.log(p)).sum()))


def field_metrics(source: TableSource) -> dict[str, tuple[float, float]]:
    """{field: (IA, RankMe)} through dcollapse's metrics, every table split by its fields (or whole)."""
    out = {}
    for table in source.tables:
        names = table.fields or [table.name]
        offsets = table.offsets if table.offsets is not None else torch.zeros(1, dtype=torch.int64)
        for fs in field_spectra(table.weight, offsets, names):
            out[fs.field] = (fs.spectrum.ia, fs.spectrum.rankme)
    return out


def assert_matches_numpy(source: TableSource, blocks: dict[str, torch.Tensor], ordered: bool = True) -> None:
    """Per-field IA / RankMe of ``source`` equal the NumPy reference of the expected row blocks, field by field.

    ``ordered``: the fields come in the order of ``blocks`` (safetensors files store their keys sorted).
    """
    got = field_metrics(source)
    assert (list(got) if ordered else sorted(got)) == (list(blocks) if ordered else sorted(blocks))
    for name, block in blocks.items():
        ia, rankme = numpy_metrics(block.detach().numpy())
        assert got[name] == pytest.approx((ia, rankme), rel=1e-6), name


# ---- modules with each library's parameter names -------------------------------------------------------------


class FuxiCTR2(nn.Module):
    """FuxiCTR 2.x: model.embedding_layer (FeatureEmbedding) .embedding_layer (FeatureEmbeddingDict) .embedding_layers.

    I1 is a numeric feature (``nn.Linear(1, d, bias=False)``, weight [d, 1]); C3 shares C1's table
    (``share_embedding``); ``lr_layer`` holds the first-order weights [V, 1] in the same layout.
    """

    def __init__(self) -> None:
        super().__init__()
        tables = nn.ModuleDict({"C1": embedding(30, 2, 1), "C2": embedding(12, 5, 2), "I1": nn.Linear(1, DIM, False)})
        tables["C3"] = tables["C1"]
        self.embedding_layer = nn.Module()
        self.embedding_layer.embedding_layer = nn.Module()
        self.embedding_layer.embedding_layer.embedding_layers = tables
        self.lr_layer = nn.Module()
        self.lr_layer.embedding_layer = nn.Module()
        self.lr_layer.embedding_layer.embedding_layer = nn.Module()
        self.lr_layer.embedding_layer.embedding_layer.embedding_layers = nn.ModuleDict({"C1": nn.Embedding(30, 1)})
        self.dnn = nn.Sequential(nn.Linear(4 * DIM, 8), nn.ReLU(), nn.Linear(8, 1))


class FuxiCTR1(nn.Module):
    """FuxiCTR 1.x: model.embedding_layer (EmbeddingLayer) .embedding_layer (ModuleDict of features)."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding_layer = nn.Module()
        self.embedding_layer.embedding_layer = nn.ModuleDict({"C1": embedding(20, 3, 3), "C2": embedding(9, 6, 4)})
        self.fc = nn.Linear(2 * DIM, 1)


class DeepCTR(nn.Module):
    """DeepCTR-Torch BaseModel: embedding_dict.<feature>, linear_model.embedding_dict.<feature> [V, 1], dnn."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding_dict = nn.ModuleDict({"user": embedding(25, 2, 5), "item": embedding(40, 4, 6)})
        self.linear_model = nn.Module()
        self.linear_model.embedding_dict = nn.ModuleDict({"user": nn.Embedding(25, 1), "item": nn.Embedding(40, 1)})
        self.dnn_linear = nn.Linear(2 * DIM, 1)


class TorchRecDLRM(nn.Module):
    """TorchRec's DLRM: sparse_arch.embedding_bag_collection.embedding_bags.<table> (EmbeddingBagCollection)."""

    def __init__(self) -> None:
        super().__init__()
        self.sparse_arch = nn.Module()
        self.sparse_arch.embedding_bag_collection = nn.Module()
        self.sparse_arch.embedding_bag_collection.embedding_bags = nn.ModuleDict(
            {"t_cat_0": embedding(33, 3, 7, bag=True), "t_cat_1": embedding(17, 6, 8, bag=True)}
        )
        self.dense_arch = nn.Linear(13, DIM)


class DLRMReference(nn.Module):
    """facebookresearch/dlrm: emb_l (ModuleList of EmbeddingBag), bot_l / top_l (Sequential MLPs)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb_l = nn.ModuleList([embedding(15, 2, 9, bag=True), embedding(22, 5, 10, bag=True)])
        self.bot_l = nn.Sequential(nn.Linear(13, DIM), nn.ReLU())
        self.top_l = nn.Sequential(nn.Linear(DIM + 3, 1), nn.Sigmoid())


class TorchFM(nn.Module):
    """pytorch-fm (torchfm) FM: embedding.embedding [sum V_f, d] (FeaturesEmbedding), linear.fc [sum V_f, 1]."""

    FIELD_DIMS = [10, 20, 7]

    def __init__(self) -> None:
        super().__init__()
        rows = sum(self.FIELD_DIMS)
        self.embedding = nn.Module()
        self.embedding.embedding = nn.Embedding(rows, DIM)
        with torch.no_grad():
            self.embedding.embedding.weight.copy_(
                torch.cat([lowrank(n, r, 11 + r) for n, r in zip([10, 20, 7], [1, 4, 6], strict=True)])
            )
        self.linear = nn.Module()
        self.linear.fc = nn.Embedding(rows, 1)
        self.linear.bias = nn.Parameter(torch.zeros(1))


class RecBole(nn.Module):
    """RecBole context-aware models: token_embedding_table (FMEmbedding) .embedding [sum V_f, d]."""

    def __init__(self) -> None:
        super().__init__()
        self.token_embedding_table = nn.Module()
        self.token_embedding_table.embedding = embedding(30, 3, 12)
        self.first_order_linear = nn.Module()
        self.first_order_linear.token_embedding_table = nn.Module()
        self.first_order_linear.token_embedding_table.embedding = nn.Embedding(30, 1)


def blocks(weight: torch.Tensor, sizes: list[int], names: list[str]) -> dict[str, torch.Tensor]:
    starts = np.cumsum([0, *sizes[:-1]])
    return {name: weight[s : s + n] for name, s, n in zip(names, starts, sizes, strict=True)}


# ---- layouts --------------------------------------------------------------------------------------------------


def test_fuxictr2_skips_numeric_and_first_order_weights_and_counts_shared_tables_once(tmp_path: Path) -> None:
    model = FuxiCTR2()
    torch.save(model.state_dict(), tmp_path / "FuxiCTR.model")
    source = read_tables(tmp_path / "FuxiCTR.model")
    assert (source.reader, source.layout) == ("torch", "fuxictr")
    assert [t.name for t in source.tables] == ["C1", "C2"]
    tables = model.embedding_layer.embedding_layer.embedding_layers
    assert_matches_numpy(source, {"C1": tables["C1"].weight, "C2": tables["C2"].weight})
    assert any(c.reason.startswith("shares its storage with") for c in source.candidates)  # C3 = C1
    assert any(n.startswith("skipped 2 width-1") for n in source.notes), source.notes  # I1 [d, 1] and LR [V, 1]


def test_fuxictr_feature_map_checks_vocab_sizes(tmp_path: Path) -> None:
    torch.save(FuxiCTR2().state_dict(), tmp_path / "m.model")
    features = [
        {"C1": {"type": "categorical", "vocab_size": 30}},
        {"C2": {"type": "categorical", "vocab_size": 12}},
        {"I1": {"type": "numeric"}},
        {"C3": {"type": "categorical", "vocab_size": 30, "share_embedding": "C1"}},
    ]
    fmap = tmp_path / "feature_map.json"
    fmap.write_text(json.dumps({"dataset_id": "x", "num_fields": 4, "features": features}))
    assert read_field_map(fmap) == [("C1", 30), ("C2", 12), ("I1", None), ("C3", 30)]
    source = read_tables(tmp_path / "m.model", field_map=fmap)
    assert [t.name for t in source.tables] == ["C1", "C2"]
    features[1]["C2"]["vocab_size"] = 13
    fmap.write_text(json.dumps({"features": features}))
    with pytest.raises(UserError, match="table C2 has 12 rows, the field map says 13"):
        read_tables(tmp_path / "m.model", field_map=fmap)


def test_fuxictr1(tmp_path: Path) -> None:
    model = FuxiCTR1()
    torch.save(model.state_dict(), tmp_path / "m.model")
    source = read_tables(tmp_path / "m.model")
    assert source.layout == "fuxictr"
    layers = model.embedding_layer.embedding_layer
    assert_matches_numpy(source, {"C1": layers["C1"].weight, "C2": layers["C2"].weight})


def test_deepctr_layout_skips_linear_model(tmp_path: Path) -> None:
    model = DeepCTR()
    torch.save(model.state_dict(), tmp_path / "deepfm.pth")
    source = read_tables(tmp_path / "deepfm.pth")
    assert source.layout == "deepctr"
    assert_matches_numpy(
        source, {"user": model.embedding_dict["user"].weight, "item": model.embedding_dict["item"].weight}
    )
    skipped = [c for c in source.candidates if c.key.startswith("linear_model.")]
    assert len(skipped) == 2 and not any(c.chosen for c in skipped)


def test_torchrec_layout_any_prefix_from_a_lightning_checkpoint(tmp_path: Path) -> None:
    """A Lightning ``.ckpt``: the state_dict nested under "state_dict", keys under the LightningModule's ``model.``."""
    model = TorchRecDLRM()
    state = {f"model._orig_mod.{k}": v for k, v in model.state_dict().items()}
    torch.save({"epoch": 3, "global_step": 120, "state_dict": state, "optimizer_states": []}, tmp_path / "last.ckpt")
    source = read_tables(tmp_path / "last.ckpt")
    assert source.layout == "torchrec"
    bags = model.sparse_arch.embedding_bag_collection.embedding_bags
    assert_matches_numpy(source, {"t_cat_0": bags["t_cat_0"].weight, "t_cat_1": bags["t_cat_1"].weight})
    assert source.tables[0].key == "model._orig_mod.sparse_arch.embedding_bag_collection.embedding_bags.t_cat_0.weight"


def test_dlrm_reference_checkpoint_and_names_from_a_field_map(tmp_path: Path) -> None:
    model = DLRMReference()
    payload = {"state_dict": model.state_dict(), "train_acc": 0.7, "opt_state_dict": {}, "iter": torch.tensor(40)}
    torch.save(payload, tmp_path / "dlrm.pt")
    source = read_tables(tmp_path / "dlrm.pt")
    assert source.layout == "dlrm"
    assert_matches_numpy(source, {"emb_l.0": model.emb_l[0].weight, "emb_l.1": model.emb_l[1].weight})
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"fields": [{"name": "C1", "vocab_size": 15}, {"name": "C2", "vocab_size": 22}]}))
    assert [t.name for t in read_tables(tmp_path / "dlrm.pt", field_map=meta).tables] == ["C1", "C2"]


def test_torchfm_concatenated_table_split_by_field_dims(tmp_path: Path) -> None:
    model = TorchFM()
    torch.save(model.state_dict(), tmp_path / "fm.pt")
    whole = read_tables(tmp_path / "fm.pt")
    assert whole.layout == "concatenated" and whole.tables[0].fields is None
    assert any("one concatenated table" in n and "--field-dims" in n for n in whole.notes)
    split = read_tables(tmp_path / "fm.pt", field_dims=TorchFM.FIELD_DIMS)
    assert split.tables[0].offsets.tolist() == [0, 10, 30]
    assert_matches_numpy(
        split, blocks(model.embedding.embedding.weight, TorchFM.FIELD_DIMS, ["field0", "field1", "field2"])
    )
    with pytest.raises(UserError, match="add up to 36 rows, but embedding.embedding.weight has 37"):
        read_tables(tmp_path / "fm.pt", field_dims=[10, 20, 6])


def test_recbole_table_split_by_a_field_map(tmp_path: Path) -> None:
    model = RecBole()
    torch.save({"epoch": 5, "state_dict": model.state_dict()}, tmp_path / "FM.pth")
    fmap = tmp_path / "feature_map.json"
    fmap.write_text(
        json.dumps({"features": [{"u": {"type": "categorical", "vocab_size": 18}}, {"i": {"vocab_size": 12}}]})
    )
    source = read_tables(tmp_path / "FM.pth", field_map=fmap)
    assert source.layout == "concatenated" and source.tables[0].fields == ["u", "i"]
    assert_matches_numpy(source, blocks(model.token_embedding_table.embedding.weight, [18, 12], ["u", "i"]))


def test_generic_fallback_and_tables_regex(tmp_path: Path) -> None:
    state = {
        "user_emb.weight": lowrank(20, 2, 13),
        "item_embeddings": lowrank(30, 5, 14),
        "fc.weight": lowrank(8, 3, 15),
    }
    torch.save(state, tmp_path / "own.bin")
    source = read_tables(tmp_path / "own.bin")
    assert source.layout == "generic" and [t.name for t in source.tables] == ["user_emb", "item_embeddings"]
    assert_matches_numpy(source, {"user_emb": state["user_emb.weight"], "item_embeddings": state["item_embeddings"]})
    picked = read_tables(tmp_path / "own.bin", tables=r"^fc\.")
    assert [t.key for t in picked.tables] == ["fc.weight"]
    assert [c.chosen for c in picked.candidates] == [False, False, True]
    with pytest.raises(UserError, match="not a valid regular expression"):
        read_tables(tmp_path / "own.bin", tables="(")
    with pytest.raises(UserError, match=r"no embedding table recognised among 3 .*--list-tables"):
        read_tables(tmp_path / "own.bin", tables="nothing")
    assert read_tables(tmp_path / "own.bin", tables="nothing", allow_empty=True).tables == []


def test_dcollapse_layout_of_a_live_model_keeps_its_offsets() -> None:
    from dcollapse.models import FieldEmbedding

    model = nn.Module()
    model.embedding = FieldEmbedding([9, 14, 5], DIM)
    model.head = nn.Linear(DIM, 1)
    source = read_tables(model)
    assert (source.reader, source.layout) == ("object", "dcollapse")
    assert_matches_numpy(source, blocks(model.embedding.table, [9, 14, 5], ["field0", "field1", "field2"]))


# ---- readers --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of a small FM trained one epoch in the `dcollapse train` format."""
    from _report_fixtures import make_dataset, make_run

    directory = tmp_path_factory.mktemp("run")
    return make_run(make_dataset(directory / "data", rows=600), directory / "run.pt", epochs=1)


def test_dcollapse_checkpoint_gives_one_table_split_like_model_field_spectra(run: Path) -> None:
    from dcollapse import checkpoint
    from dcollapse.metrics.collapse import model_field_spectra
    from dcollapse.models import load_model

    source = read_tables(run)
    assert (source.reader, source.layout) == ("dcollapse", "dcollapse") and source.checkpoint is not None
    (table,) = source.tables
    ckpt = checkpoint.load(run)
    expected = model_field_spectra(load_model(ckpt), ckpt["meta"])
    assert table.fields == [f.field for f in expected]
    sizes = [f.vocab_size for f in expected]
    assert_matches_numpy(source, blocks(ckpt["state_dict"]["embedding.table"], sizes, table.fields))
    with pytest.raises(UserError, match="knows its fields; drop --field-dims"):
        read_tables(run, field_dims=[1, 2])


def test_safetensors_file_and_sharded_directory(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model = DeepCTR()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file({**state, "half_emb": lowrank(9, 2, 20).to(torch.bfloat16)}, tmp_path / "model.safetensors")
    single = read_tables(tmp_path / "model.safetensors", tables="emb")
    assert single.reader == "safetensors" and not any(t.weight.is_meta for t in single.tables)
    dtypes = {c.key: c.dtype for c in single.candidates}
    assert dtypes["half_emb"] == "bfloat16" and dtypes["linear_model.embedding_dict.user.weight"] == "float32"
    shards = tmp_path / "sharded"
    shards.mkdir()
    keys = list(state)
    save_file({k: state[k] for k in keys[:2]}, shards / "model-00001-of-00002.safetensors")
    save_file({k: state[k] for k in keys[2:]}, shards / "model-00002-of-00002.safetensors")
    weight_map = {k: f"model-0000{1 + (i >= 2)}-of-00002.safetensors" for i, k in enumerate(keys)}
    (shards / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    source = read_tables(shards)
    assert (source.reader, source.layout) == ("safetensors", "deepctr")
    assert_matches_numpy(
        source,
        {"user": state["embedding_dict.user.weight"], "item": state["embedding_dict.item.weight"]},
        ordered=False,
    )
    (shards / "model-00002-of-00002.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    with pytest.raises(UserError, match="model-00002-of-00002.safetensors: not a readable safetensors file"):
        read_tables(shards)


def test_numpy_npy_and_npz(tmp_path: Path) -> None:
    table = lowrank(40, 3, 16).numpy()
    np.save(tmp_path / "item_embedding.npy", table)
    source = read_tables(tmp_path / "item_embedding.npy")
    assert (source.reader, [t.name for t in source.tables]) == ("numpy", ["item_embedding"])
    assert_matches_numpy(source, {"item_embedding": torch.from_numpy(table)})
    np.savez(tmp_path / "tables.npz", user_emb=table[:10], bias=table[:, 0])
    assert [t.name for t in read_tables(tmp_path / "tables.npz").tables] == ["user_emb"]
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(UserError, match="objects.npy: refused or unreadable NumPy file"):
        read_tables(tmp_path / "objects.npy")


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_torch_distributed_checkpoint_directory_reads_only_the_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch.distributed.checkpoint as dcp

    model = TorchRecDLRM()
    optimizer_state = {"state": {"t_cat_0.momentum": torch.randn(33, DIM), "step": torch.tensor(7.0)}}
    dcp.save({"model": model.state_dict(), "optim": optimizer_state}, checkpoint_id=str(tmp_path / "dcp"), no_dist=True)
    requested: list[str] = []
    real_load = dcp.load

    def spy(state: dict, **kwargs: object) -> None:
        requested.extend(state)
        real_load(state, **kwargs)

    monkeypatch.setattr(dcp, "load", spy)
    source = read_tables(tmp_path / "dcp")
    assert (source.reader, source.layout) == ("dcp", "torchrec")
    bags = model.sparse_arch.embedding_bag_collection.embedding_bags
    assert_matches_numpy(source, {"t_cat_0": bags["t_cat_0"].weight, "t_cat_1": bags["t_cat_1"].weight})
    assert requested == [t.key for t in source.tables]  # the optimizer state and the dense layers were not read
    assert "optim.state.t_cat_0.momentum" in {c.key for c in source.candidates}
    (tmp_path / "dcp" / ".metadata").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="not a readable torch.distributed.checkpoint directory"):
        read_tables(tmp_path / "dcp")


def test_a_saved_tensor_is_named_after_its_file(tmp_path: Path) -> None:
    torch.save(lowrank(12, 2, 18), tmp_path / "item_vectors.pt")
    assert [t.name for t in read_tables(tmp_path / "item_vectors.pt").tables] == ["item_vectors"]


def test_live_tensor_state_dict_and_module() -> None:
    weight = lowrank(12, 2, 17)
    assert_matches_numpy(read_tables(weight), {"tensor": weight})
    assert read_tables({"emb.weight": weight}).tables[0].name == "emb"
    model = DeepCTR()
    source = read_tables(model)
    assert source.reader == "object" and source.path is None
    assert all(not t.weight.requires_grad for t in source.tables)


# ---- refusals: one line, nothing run ---------------------------------------------------------------------------


class RunsCode:
    """Unpickling this creates ``marker``: stands in for a checkpoint that runs code when loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("how", ["torch.save", "pickle.dump"])
def test_code_executing_pickle_is_refused_and_not_run(tmp_path: Path, how: str) -> None:
    marker, path = tmp_path / "was_run", tmp_path / "evil.pt"
    payload = {"state_dict": {"emb.weight": torch.ones(3, 2)}, "x": RunsCode(marker)}
    if how == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(UserError) as info:
        read_tables(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: refused to load") and "state_dict" in message
    assert not marker.exists()


def test_whole_pickled_module_is_refused_with_a_howto(tmp_path: Path) -> None:
    torch.save(DeepCTR(), tmp_path / "model.pth")  # DeepCTR-Torch's own examples save whole models this way
    with pytest.raises(UserError, match=r"whole pickled nn.Module .*torch.save\(model.state_dict\(\), path\)"):
        read_tables(tmp_path / "model.pth")


def test_truncated_file(tmp_path: Path) -> None:
    torch.save(DeepCTR().state_dict(), tmp_path / "m.pt")
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "m.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="m.pt: not a readable PyTorch file") as info:
        read_tables(tmp_path / "m.pt")
    assert "\n" not in str(info.value)


def test_state_dict_without_2d_tensors(tmp_path: Path) -> None:
    torch.save({"bias": torch.zeros(4), "step": torch.tensor(3)}, tmp_path / "m.pt")
    with pytest.raises(UserError, match="no 2-D floating tensors among its 2 tensors"):
        read_tables(tmp_path / "m.pt")


def test_missing_and_foreign_sources(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file or directory"):
        read_tables(tmp_path / "absent.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="a directory without safetensors"):
        read_tables(tmp_path / "empty")
    with pytest.raises(UserError, match="cannot read embedding tables from a int"):
        read_tables(3)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(UserError, match="holds a list, not a state_dict"):
        read_tables(tmp_path / "list.pt")


# ---- a real DeepCTR-Torch model -------------------------------------------------------------------------------


def test_real_deepctr_torch_model_trained_saved_and_read_back(tmp_path: Path) -> None:
    pytest.importorskip("deepctr_torch")
    os.environ.setdefault("TQDM_DISABLE", "1")
    from deepctr_torch.inputs import SparseFeat, get_feature_names
    from deepctr_torch.models import DeepFM

    vocab = {"user": 30, "item": 50, "city": 8}
    columns = [SparseFeat(name, size, embedding_dim=DIM) for name, size in vocab.items()]
    rng = np.random.default_rng(0)
    x = {name: rng.integers(0, size, 512) for name, size in vocab.items()}
    y = ((x["user"] + x["item"]) % 3 == 0).astype(np.float32)
    torch.manual_seed(0)
    model = DeepFM(columns, columns, dnn_hidden_units=(16,), task="binary", device="cpu")
    model.compile("adam", "binary_crossentropy")
    model.fit({n: x[n] for n in get_feature_names(columns)}, y, batch_size=128, epochs=2, verbose=0)
    torch.save(model.state_dict(), tmp_path / "DeepFM.pth")
    source = read_tables(tmp_path / "DeepFM.pth")
    assert source.layout == "deepctr" and [t.name for t in source.tables] == list(vocab)
    assert_matches_numpy(source, {n: model.embedding_dict[n].weight for n in vocab})


# ---- docs/any-model.md ---------------------------------------------------------------------------------------

DOC = Path(__file__).resolve().parents[1] / "docs" / "any-model.md"
RUNNABLE = "<!-- runs in tests/test_sources.py -->\n```python\n"


def test_any_model_doc_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The doc's marked Python examples run as written (in a scratch directory)."""
    if not DOC.is_file():
        pytest.skip("docs/ not shipped with this copy")
    blocks = [part.split("```\n", 1)[0] for part in DOC.read_text().split(RUNNABLE)[1:]]
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), {"__name__": "doc_example"})
    assert (tmp_path / "collapse.jsonl").read_text().count("\n") == 4  # steps 0, 50, 100, 150


def test_live_checkpoint_dict_is_validated_like_a_file(run: Path) -> None:
    from dcollapse import checkpoint

    ckpt = checkpoint.load(run)
    assert read_tables(ckpt).tables[0].fields == [f["name"] for f in ckpt["meta"]["fields"]]
    broken = {**ckpt, "state_dict": {**ckpt["state_dict"], "embedding.table": torch.full((3, 2), float("nan"))}}
    with pytest.raises(UserError, match="<checkpoint dict>: damaged checkpoint"):
        read_tables(broken)
    with pytest.raises(UserError, match="lacks history"):
        read_tables({k: v for k, v in ckpt.items() if k != "history"})


def test_cli_refusals_are_one_line_and_exit_2(tmp_path: Path) -> None:
    """``dcollapse spectrum`` on each refused file: exit 2, one line naming the file, no traceback, nothing run."""
    from typer.testing import CliRunner

    from dcollapse.cli.app import app

    marker = tmp_path / "was_run"
    torch.save({"emb.weight": torch.ones(3, 2), "x": RunsCode(marker)}, tmp_path / "evil.pt")
    torch.save(DeepCTR(), tmp_path / "whole.pth")
    torch.save(DeepCTR().state_dict(), tmp_path / "cut.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "cut.pt").read_bytes()[:900])
    torch.save({"bias": torch.zeros(4)}, tmp_path / "flat.pt")
    for name in ("evil.pt", "whole.pth", "cut.pt", "flat.pt"):
        result = CliRunner().invoke(app, ["spectrum", str(tmp_path / name)])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2, result.output
        assert len(lines) == 1 and str(tmp_path / name) in lines[0] and "Traceback" not in result.output, lines
    assert not marker.exists()


def test_real_torchfm_deepfm_read_back_split_by_field_dims(tmp_path: Path) -> None:
    pytest.importorskip("torchfm")
    from torchfm.model.dfm import DeepFactorizationMachineModel

    field_dims = [10, 20, 7]
    torch.manual_seed(0)
    model = DeepFactorizationMachineModel(field_dims, embed_dim=DIM, mlp_dims=(16,), dropout=0.0)
    torch.save(model.state_dict(), tmp_path / "dfm.pt")
    source = read_tables(tmp_path / "dfm.pt", field_dims=field_dims)
    assert source.layout == "concatenated" and source.tables[0].key == "embedding.embedding.weight"
    assert_matches_numpy(source, blocks(model.embedding.embedding.weight, field_dims, ["field0", "field1", "field2"]))
