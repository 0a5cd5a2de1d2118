"""dcollapse preprocess: every format, the Criteo binning rule, vocabularies/OOV, splits, apply mode, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from _data_fixtures import criteo_row, shared_data, write_lines
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from dcollapse.cli.app import app
from dcollapse.data.dataset import load_meta, load_split
from dcollapse.data.preprocess import Options, preprocess
from dcollapse.data.vocabulary import log_bin
from dcollapse.errors import UserError

ALL_TRAIN = {"valid_frac": 0.0, "test_frac": 0.0}


def run(inputs, out, **opts) -> dict:
    return preprocess([str(p) for p in inputs], out, Options(**opts))


def frame(out: Path, split: str = "train") -> pl.DataFrame:
    return pl.read_parquet(out / f"{split}.parquet")


def vocab_of(out: Path, field: str) -> dict[str, int]:
    v = pl.read_parquet(out / "vocab.parquet").filter(pl.col("field") == field)
    return dict(zip(v["token"].to_list(), v["id"].to_list(), strict=True))


def cli(*args: str):
    return CliRunner().invoke(app, ["preprocess", *args])


# ------------------------------------------------------------------------------------------------ the binning rule


def test_criteo_log_binning_hand_checked_values():
    values = [-1.0, 0.0, 1.0, 2.0, 2.5, 3.0, 10.0, 100.0, 1000.0, 1e6, None]
    # v > 2 -> int(ln(v)^2): ln 2.5 = 0.916 -> 0.84 -> 0; ln 3 = 1.0986 -> 1.207 -> 1; ln 10 = 2.3026 -> 5.30 -> 5;
    # ln 100 = 4.605 -> 21.21 -> 21; ln 1000 = 6.908 -> 47.7 -> 47; ln 1e6 = 13.8155 -> 190.87 -> 190; else v itself.
    expected = [-1.0, 0.0, 1.0, 2.0, 0.0, 1.0, 5.0, 21.0, 47.0, 190.0, None]
    got = pl.DataFrame({"v": values}).select(log_bin(pl.col("v")))["v"].to_list()
    assert got == expected
    assert [int(math.log(v) ** 2) for v in (3.0, 10.0, 100.0, 1000.0, 1e6)] == [1, 5, 21, 47, 190]


# ------------------------------------------------------------------------------------------------------- criteo


def test_criteo_ids_vocab_and_missing(tmp_path):
    lines = [
        criteo_row("1", ["10", "-1"], ["a"]),
        criteo_row("0", ["12", "4"], ["a"]),
        criteo_row("0", ["", "1"], ["a"]),
        criteo_row("1", ["100", "0"], ["b"]),
        criteo_row("0", ["1", ""], ["b"]),
        criteo_row("0", ["2", "3"], ["c"]),
        criteo_row("1", ["3", "2"], [""]),
    ]
    src = write_lines(tmp_path / "train.txt", lines)
    meta = run([src], tmp_path / "out", format="criteo", **ALL_TRAIN)
    assert [f["name"] for f in meta["fields"]] == [f"I{k}" for k in range(1, 14)] + [f"C{k}" for k in range(1, 27)]
    assert meta["splits"] == {"train": {"file": "train.parquet", "rows": 7, "positives": 3}}
    df = frame(tmp_path / "out")
    assert df.schema["C1"] == pl.Int32 and df.schema["label"] == pl.Int8
    # C1: a x3 -> 2, b x2 -> 3, c x1 -> 4 (by decreasing count), missing -> 1; vocab = OOV + missing + 3.
    assert df["C1"].to_list() == [2, 2, 2, 3, 3, 4, 1]
    assert meta["fields"][13]["vocab_size"] == 5
    # I1 tokens: 10 -> 5, 12 -> 6, missing, 100 -> 21, 1 -> 1, 2 -> 2, 3 -> 1 (same token as 1: the convention).
    i1 = df["I1"].to_list()
    assert i1[2] == 1 and i1[4] == i1[6] and len({i1[0], i1[1], i1[3], i1[4], i1[5]}) == 5
    # I2: 4 -> int(1.92) = 1 collides with 1; -1, 0, 2, 3 -> 1 ... distinct tokens -1, 1, 0, 2 and missing.
    i2 = df["I2"].to_list()
    assert i2[1] == i2[2] == i2[5] and i2[4] == 1 and len({i2[0], i2[1], i2[3], i2[6]}) == 4
    # fields with only missing values: vocab = {OOV, missing}, every id 1.
    assert meta["fields"][12]["vocab_size"] == 2 and set(df["I13"].to_list()) == {1}
    offsets = [f["offset"] for f in meta["fields"]]
    sizes = [f["vocab_size"] for f in meta["fields"]]
    assert offsets == list(np.cumsum([0, *sizes[:-1]]))
    assert meta["format"] == "dcollapse.dataset" and meta["version"] == 1 and meta["skipped_rows"] == 0
    assert meta["input_hash"].startswith("sha256:") and meta["options"]["format"] == "criteo"


def test_min_count_maps_rare_values_to_oov(tmp_path):
    src = write_lines(tmp_path / "t.txt", [criteo_row("0", [], [c]) for c in "aaabbc"])
    meta = run([src], tmp_path / "out", format="criteo", min_count=2, **ALL_TRAIN)
    assert frame(tmp_path / "out")["C1"].to_list() == [2, 2, 2, 3, 3, 0]
    assert meta["fields"][13]["vocab_size"] == 4  # OOV, missing, a, b


def test_random_split_is_seeded_disjoint_and_complete(tmp_path):
    src = write_lines(tmp_path / "t.txt", [criteo_row(str(i % 2), [str(i)], [f"v{i}"]) for i in range(2000)])
    meta = run([src], tmp_path / "a", format="criteo", valid_frac=0.2, test_frac=0.1, seed=3)
    again = run([src], tmp_path / "b", format="criteo", valid_frac=0.2, test_frac=0.1, seed=3)
    other = run([src], tmp_path / "c", format="criteo", valid_frac=0.2, test_frac=0.1, seed=4)
    rows = {s: meta["splits"][s]["rows"] for s in ("train", "valid", "test")}
    assert sum(rows.values()) == 2000
    assert abs(rows["valid"] - 400) < 80 and abs(rows["test"] - 200) < 60
    assert again["splits"] == meta["splits"] and other["splits"] != meta["splits"]
    # Vocabularies come from train only: every valid/test value is unique, so all are OOV there.
    assert set(frame(tmp_path / "a", "valid")["C1"].to_list()) == {0}
    assert (frame(tmp_path / "a", "train")["C1"] >= 2).all()


def test_split_follows_row_content_not_position(tmp_path):
    """The same rows in reverse order through the checked reader (CRLF) get the same splits as through the native
    one, row by row (train membership = the train vocabulary of a key unique per row)."""
    rows = [criteo_row(str(i % 2), [str(i % 7)], [f"k{i}", f"v{i % 5}"]) for i in range(600)]
    forward = write_lines(tmp_path / "f.txt", rows)
    backward = tmp_path / "b.txt"
    backward.write_bytes("".join(r + "\r\n" for r in reversed(rows)).encode())
    opts = {"format": "criteo", "valid_frac": 0.2, "test_frac": 0.2, "seed": 1}
    a, b = run([forward], tmp_path / "a", **opts), run([backward], tmp_path / "b", **opts)
    assert a["splits"] == b["splits"]
    assert set(vocab_of(tmp_path / "a", "C1")) == set(vocab_of(tmp_path / "b", "C1"))
    assert 0 < a["splits"]["valid"]["rows"] < 600


def test_split_is_the_same_with_and_without_a_header(tmp_path):
    body = [f"{i % 2},k{i},{i % 3}" for i in range(500)]
    with_header = write_lines(tmp_path / "h.csv", ["click,key,n", *body])
    bare = write_lines(tmp_path / "n.csv", body)
    common = {"format": "csv", "label": "click", "categorical": ["key"], "numeric": ["n"], "seed": 2}
    a = run([with_header], tmp_path / "a", **common)
    b = run([bare], tmp_path / "b", **common, header=False, columns=["click", "key", "n"])
    assert a["splits"] == b["splits"]
    assert set(vocab_of(tmp_path / "a", "key")) == set(vocab_of(tmp_path / "b", "key"))


def test_duplicated_rows_never_straddle_splits(tmp_path):
    src = write_lines(tmp_path / "d.txt", [criteo_row(str(i % 2), [], [f"k{i % 40}"]) for i in range(800)])
    run([src], tmp_path / "out", format="criteo", valid_frac=0.3, test_frac=0.3, seed=0, min_count=1)
    # every key appears 20 times (always with the same label); all its copies are in the train split or none is
    train_keys = frame(tmp_path / "out")["C1"].value_counts()
    assert set(train_keys["count"].to_list()) == {20}


def test_split_files_keep_given_files_as_splits(tmp_path):
    rows = [criteo_row("1", [str(i)], ["x"]) for i in range(50)] + [criteo_row("0", [str(i)], ["y"]) for i in range(50)]
    train = write_lines(tmp_path / "train.txt", rows)  # distinct rows: identical ones would share one split
    test = write_lines(tmp_path / "test.txt", [criteo_row("0", [], ["y"]), criteo_row("1", [], ["new"])])
    meta = run([train, test], tmp_path / "out", format="criteo", split_files=True, valid_frac=0.2)
    assert meta["splits"]["test"]["rows"] == 2 and meta["splits"]["test"]["positives"] == 1
    assert meta["splits"]["train"]["rows"] + meta["splits"]["valid"]["rows"] == 100
    assert frame(tmp_path / "out", "test")["C1"].to_list()[1] == 0  # unseen in train -> OOV


def test_apply_mode_reuses_vocabularies(tmp_path):
    train = write_lines(tmp_path / "train.txt", [criteo_row("0", ["5"], [c]) for c in "aabbbc"])
    new = write_lines(tmp_path / "new.txt", [criteo_row("1", ["5"], ["b"]), criteo_row("0", ["7"], ["zzz"])])
    base = run([train], tmp_path / "base", format="criteo", **ALL_TRAIN)
    applied = preprocess([str(new)], tmp_path / "applied", Options(apply=str(tmp_path / "base")))
    assert applied["fields"] == base["fields"]
    assert list(applied["splits"]) == ["test"] and applied["splits"]["test"]["rows"] == 2
    got = frame(tmp_path / "applied", "test")
    assert got["C1"].to_list() == [vocab_of(tmp_path / "base", "C1")["b"], 0]
    assert got["I1"][0] == frame(tmp_path / "base")["I1"][0]  # 5 -> same token, same id
    assert got["I1"][1] == 0  # 7 -> int(ln(7)^2) = 3, never seen in train -> OOV
    # Applying to the training file itself reproduces the training ids exactly.
    again = preprocess([str(train)], tmp_path / "again", Options(apply=str(tmp_path / "base")))
    assert again["splits"]["test"]["rows"] == 6
    assert frame(tmp_path / "again", "test").equals(frame(tmp_path / "base"))


# ------------------------------------------------------------------------------------------------ other formats


def test_csv_default_all_columns_categorical_and_label(tmp_path):
    src = write_lines(tmp_path / "d.csv", ["label,color,size", "1,red,S", "0,blue,M", "1,red,", '0,"green",M'])
    meta = run([src], tmp_path / "out", format="csv", label="label", **ALL_TRAIN)
    assert [(f["name"], f["kind"]) for f in meta["fields"]] == [("color", "categorical"), ("size", "categorical")]
    df = frame(tmp_path / "out")
    assert df["label"].to_list() == [1, 0, 1, 0]
    assert df["color"].to_list() == [2, 3, 2, 4] and df["size"][2] == 1
    assert "green" in vocab_of(tmp_path / "out", "color")


def test_csv_numeric_quantile_bins_and_roles(tmp_path):
    rows = [f"{i % 2};{i};k{i % 3};ignored" for i in range(1, 101)]
    src = write_lines(tmp_path / "d.csv", ["y;amount;kind;note", *rows])
    meta = run(
        [src], tmp_path / "out", format="csv", label="y", categorical=["kind"], numeric=["amount"], drop=["note"],
        numeric_bins="4", separator=";", **ALL_TRAIN,
    )  # fmt: skip
    assert [(f["name"], f["kind"]) for f in meta["fields"]] == [("kind", "categorical"), ("amount", "numeric")]
    amount = frame(tmp_path / "out")["amount"].to_numpy()
    counts = np.bincount(amount)[2:]
    assert len(counts) == 4 and counts.min() >= 20  # 4 quantile bins of 1..100, about 25 each
    assert (np.diff(amount) >= 0).sum() >= 96  # bins are monotone in the value (ids differ only by rank order)
    log = run([src], tmp_path / "log", format="csv", label="y", numeric=["amount"], drop=["note"], separator=";",
              **ALL_TRAIN)  # fmt: skip
    assert [f["name"] for f in log["fields"]] == ["kind", "amount"]  # kind, not given a role, inferred categorical
    assert log["fields"][-1]["vocab_size"] == 2 + len({int(math.log(v) ** 2) if v > 2 else v for v in range(1, 101)})


def test_parquet_input(tmp_path):
    src = tmp_path / "d.parquet"
    pl.DataFrame({"click": [1.0, 0.0, 1.0], "site": ["s1", "s2", None], "price": [0.5, 30.0, None]}).write_parquet(src)
    meta = run([src], tmp_path / "out", format="parquet", label="click", categorical=["site"], numeric=["price"],
               **ALL_TRAIN)  # fmt: skip
    df = frame(tmp_path / "out")
    assert meta["splits"]["train"]["positives"] == 2 and df["site"][2] == 1 and df["price"][2] == 1


def test_avazu_hour_split_and_no_header(tmp_path):
    header = (
        "id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,app_category,device_id,"
        "device_ip,device_model,device_type,device_conn_type,C14,C15,C16,C17,C18,C19,C20,C21"
    )
    body = ["1,0,14102100," + ",".join(["x"] * 21), "2,1,14102623," + ",".join(["y"] * 21)]
    meta = run([write_lines(tmp_path / "a.csv", [header, *body])], tmp_path / "out", format="avazu", **ALL_TRAIN)
    names = [f["name"] for f in meta["fields"]]
    assert names[:4] == ["hour_of_day", "weekday", "weekend", "C1"] and "id" not in names and len(names) == 24
    assert frame(tmp_path / "out")["label"].to_list() == [0, 1]
    # 2014-10-21 is a Tuesday (ISO weekday 2), 2014-10-26 a Sunday (7); hours 00 and 23.
    assert set(vocab_of(tmp_path / "out", "weekday")) == {"2", "7"}
    assert set(vocab_of(tmp_path / "out", "hour_of_day")) == {"0", "23"}
    assert set(vocab_of(tmp_path / "out", "weekend")) == {"0", "1"}  # the Sunday row is a weekend
    bare = run([write_lines(tmp_path / "b.csv", body)], tmp_path / "bare", format="avazu", header=False, **ALL_TRAIN)
    assert bare["fields"] == meta["fields"]


def test_libfm(tmp_path):
    src = write_lines(tmp_path / "d.libfm", ["1 3:1 10:1 20:1", "-1 4:1 10:1 21:1", "-1 3:1  11:1 20:1"])
    meta = run([src], tmp_path / "out", format="libfm", **ALL_TRAIN)
    assert [f["name"] for f in meta["fields"]] == ["f1", "f2", "f3"]
    df = frame(tmp_path / "out")
    assert df["label"].to_list() == [1, 0, 0] and df["f1"][0] == df["f1"][2] != df["f1"][1]


def test_movielens_folder(tmp_path):
    folder = tmp_path / "ml"
    folder.mkdir()
    write_lines(folder / "u.data", ["1\t10\t5\t0", "2\t10\t3\t7200", "1\t11\t4\t3600"])
    write_lines(folder / "u.user", ["1|24|M|technician|85711", "2|53|F|other|94043"])
    genres = "|".join(["0"] * 19)
    write_lines(
        folder / "u.item",
        [f"10|A (1995)|01-Jan-1995||url|{genres[:-1]}1", "11|B (1996)|01-Jan-1996||url|0|1|1" + "|0" * 16],
    )
    meta = run([folder], tmp_path / "out", format="movielens", **ALL_TRAIN)
    assert [f["name"] for f in meta["fields"]] == [
        "user", "item", "age", "gender", "occupation", "zip", "genre", "release_year", "hour",
    ]  # fmt: skip
    df = frame(tmp_path / "out")
    assert df["label"].to_list() == [1, 0, 1]  # rating >= 4
    assert set(vocab_of(tmp_path / "out", "hour")) == {"0", "1", "2"}
    assert set(vocab_of(tmp_path / "out", "age")) == {"18-24", "50-55"}
    assert set(vocab_of(tmp_path / "out", "genre")) == {"18", "1"}  # first genre flag set
    assert set(vocab_of(tmp_path / "out", "release_year")) == {"1995", "1996"}


# ----------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        (["0\t1\t2"], "line 2: expected 40 columns, found 3"),
        ([criteo_row("0", ["x1"])], "line 2: I1: not a number: 'x1'"),
        ([criteo_row("2")], "line 2: label must be 0 or 1, got '2'"),
        ([criteo_row("")], "line 2: label is missing"),
    ],
)
def test_bad_rows_are_reported_with_file_and_line(tmp_path, lines, problem):
    src = write_lines(tmp_path / "bad.txt", [criteo_row("1", ["1"], ["a"]), *lines, criteo_row("0")])
    result = cli(str(src), "--format", "criteo", "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert f"{src}, {problem}" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt"]  # nothing half-written


def test_bad_rows_skip_counts_them(tmp_path):
    src = write_lines(tmp_path / "bad.txt", [criteo_row("1"), "garbage", criteo_row("7"), criteo_row("0")])
    result = cli(str(src), "--format", "criteo", "--out", str(tmp_path / "out"), "--bad-rows", "skip", "--json",
                 "--valid-frac", "0", "--test-frac", "0")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    meta = json.loads(result.stdout)
    assert meta["skipped_rows"] == 2 and meta["splits"]["train"]["rows"] == 2
    assert load_meta(tmp_path / "out")["skipped_rows"] == 2


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (lambda d: (d / "e.txt").write_text(""), ["e.txt", "--format", "criteo"], "e.txt: empty file"),
        (lambda d: (d / "h.csv").write_text("label,a\n"), ["h.csv", "--format", "csv"], "h.csv: empty file"),
        (lambda d: (d / "c.csv").write_text("label,a\n1,x\n"), ["c.csv", "--format", "csv", "--numeric", "b"],
         "c.csv: missing column 'b'"),
        (lambda d: (d / "c.csv").write_text("lab,a\n1,x\n"), ["c.csv", "--format", "csv"], "missing column 'label'"),
        (lambda d: None, ["nope.txt", "--format", "criteo"], "nope.txt: no such file or directory"),
        (lambda d: (d / "out").mkdir() or (d / "t.txt").write_text(criteo_row() + "\n"),
         ["t.txt", "--format", "criteo"], "out: already exists (pass --overwrite"),
        (lambda d: (d / "b.txt").write_bytes(b"\xff\xfe\x00\x80\n"), ["b.txt", "--format", "criteo"],
         "b.txt, line 1, byte 1: 0xff is not UTF-8 text"),
        (lambda d: (d / "t.txt").write_text(criteo_row() + "\n"), ["t.txt", "--format", "xml"], "--format must be"),
        (lambda d: (d / "t.txt").write_text(criteo_row() + "\n"), ["t.txt", "--format", "criteo", "--seed", "-1"],
         "--seed must be >= 0"),
        (lambda d: (d / "t.txt").write_text(criteo_row() + "\n"), ["t.txt", "--format", "criteo", "--bad-rows", "x"],
         "--bad-rows must be"),
        (lambda d: (d / "t.txt").write_text(criteo_row() + "\n"), ["t.txt", "--apply", "t.txt"],
         "not a dataset written by"),
    ],
)  # fmt: skip
def test_bad_input_one_line_exit_2(tmp_path, monkeypatch, setup, args, message):
    monkeypatch.chdir(tmp_path)
    setup(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = cli(*args, "--out", "out")
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_overwrite_replaces_existing_output(tmp_path):
    src = write_lines(tmp_path / "t.txt", [criteo_row("1", [], ["a"])] * 3)
    run([src], tmp_path / "out", format="criteo", **ALL_TRAIN)
    with pytest.raises(UserError, match="already exists"):
        run([src], tmp_path / "out", format="criteo", **ALL_TRAIN)
    meta = preprocess([str(src)], tmp_path / "out", Options(format="criteo", **ALL_TRAIN), overwrite=True)
    assert meta["splits"]["train"]["rows"] == 3


def test_cli_summary_and_help(tmp_path):
    src = write_lines(tmp_path / "d.csv", ["label,a", "1,x", "0,y"])
    result = cli(str(src), "--format", "csv", "--out", str(tmp_path / "out"), "--valid-frac", "0", "--test-frac", "0")
    assert result.exit_code == 0 and "split train" in result.stdout and "field a" in result.stdout
    assert "Example: dcollapse preprocess" in CliRunner().invoke(app, ["preprocess", "--help"]).stdout


# ------------------------------------------------------------------------------------------------------- fuzzing

NEAR_VALID = st.lists(
    st.one_of(
        st.just(criteo_row("1", ["3", "-1"], ["ab"])),
        st.text(alphabet='01\t-x.9e \r,"', max_size=60),
        st.builds(lambda n: "\t".join(["0"] * n), st.integers(0, 45)),
    ),
    min_size=0,
    max_size=6,
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=200), NEAR_VALID.map(lambda ls: "\n".join(ls).encode())))
@pytest.mark.parametrize("fmt", ["criteo", "csv"])
def test_fuzzed_input_never_crashes(tmp_path, fmt, data):
    src = tmp_path / "fuzz.txt"
    src.write_bytes(data)
    out = tmp_path / "fuzz-out"
    for skip in ("error", "skip"):
        try:
            meta = preprocess([str(src)], out, Options(format=fmt, bad_rows=skip), overwrite=True)
        except UserError as exc:
            assert "\n" not in str(exc)
        else:
            assert sum(s["rows"] for s in meta["splits"].values()) + meta["skipped_rows"] >= 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no scratch or temp dirs left


# ---------------------------------------------------------------------------------------------- real data samples

SHARED = shared_data()
needs_shared = pytest.mark.skipif(SHARED is None, reason="real data samples not available")


@needs_shared
def test_real_criteo_sample_with_split_files_and_apply(tmp_path):
    folder = SHARED / "criteo-sample-10k"
    if not (folder / "train.txt").is_file():
        pytest.skip("criteo-sample-10k not present")
    meta = run([folder / "train.txt", folder / "test.txt"], tmp_path / "out", format="criteo", split_files=True)
    assert meta["splits"]["test"] == {"file": "test.parquet", "rows": 2000, "positives": 454}
    assert meta["splits"]["train"]["rows"] + meta["splits"]["valid"]["rows"] == 8000
    split = load_split(tmp_path / "out", "train")
    assert split.ids.shape[1] == 39 and 0.15 < float(split.labels.mean()) < 0.3
    preprocess([str(folder / "test.txt")], tmp_path / "applied", Options(apply=str(tmp_path / "out")))
    assert frame(tmp_path / "applied", "test").equals(frame(tmp_path / "out", "test"))


@needs_shared
def test_real_deepctr_samples_as_csv_and_avazu(tmp_path):
    folder = SHARED / "criteo-deepctr-sample"
    if not (folder / "criteo_sample.txt").is_file():
        pytest.skip("criteo-deepctr-sample not present")
    ints = ",".join(f"I{k}" for k in range(1, 14))
    cats = ",".join(f"C{k}" for k in range(1, 27))
    meta = run([folder / "criteo_sample.txt"], tmp_path / "c", format="csv", numeric=[ints], categorical=[cats])
    assert sum(s["rows"] for s in meta["splits"].values()) == 200 and len(meta["fields"]) == 39
    meta = run([folder / "avazu_sample.txt"], tmp_path / "a", format="avazu")
    assert sum(s["rows"] for s in meta["splits"].values()) == 100


@needs_shared
def test_real_movielens_100k(tmp_path):
    folder = SHARED / "movielens-100k"
    if not (folder / "u.data").is_file():
        pytest.skip("movielens-100k not present")
    meta = run([folder], tmp_path / "out", format="movielens")
    rows = sum(s["rows"] for s in meta["splits"].values())
    positives = sum(s["positives"] for s in meta["splits"].values())
    assert rows == 100_000 and positives == 34_174 + 21_201  # ratings 4 and 5
    sizes = {f["name"]: f["vocab_size"] for f in meta["fields"]}
    assert sizes["gender"] == 4 and sizes["hour"] == 26 and sizes["age"] == 9


# ------------------------------------------------------------------ larger Criteo files: line ends, deep bad rows


def _criteo_lines(n: int) -> list[str]:
    """``n`` valid Criteo rows with missing values, signs, exponents and padded numbers."""
    rng = np.random.default_rng(0)
    ints = ["", "0", "-1", "3", " 7", "1e2", "12.5", "250"]
    return [
        criteo_row(str(i % 2), [ints[k] for k in rng.integers(0, len(ints), 13)],
                   [f"{c:x}" if c else "" for c in rng.integers(0, 40, 26)])
        for i in range(n)
    ]  # fmt: skip


def _outputs(out: Path) -> tuple:
    meta = load_meta(out)
    meta.pop("input_hash"), meta.pop("name")  # the only differences: input bytes and the directory name
    splits = tuple(frame(out, s) for s in meta["splits"])
    return meta, splits, pl.read_parquet(out / "vocab.parquet")


def test_crlf_line_ends_and_a_missing_last_newline_give_the_same_dataset(tmp_path):
    lines = _criteo_lines(3000)
    train = tmp_path / "train.txt"
    train.write_text("\n".join(lines))  # no newline after the last line
    test = write_lines(tmp_path / "test.txt", lines[:500])
    lf = run([train, test], tmp_path / "lf", format="criteo", split_files=True, valid_frac=0.2)
    assert lf["skipped_rows"] == 0 and lf["splits"]["test"]["rows"] == 500 and lf["splits"]["train"]["rows"] > 2000
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(train.read_bytes().replace(b"\n", b"\r\n"))
    run([crlf, test], tmp_path / "crlf", format="criteo", split_files=True, valid_frac=0.2)
    got, want = _outputs(tmp_path / "crlf"), _outputs(tmp_path / "lf")
    assert got[0]["splits"] == want[0]["splits"] and got[2].equals(want[2])
    assert all(a.equals(b) for a, b in zip(got[1], want[1], strict=True))


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ("\t".join(["0"] * 39), "expected 40 columns, found 39"),
        ("\t".join(["0"] * 41), "expected 40 columns, found 41"),
        (criteo_row("1", ["1", "2", "x3"]), "I3: not a number: 'x3'"),
        (criteo_row("2"), "label must be 0 or 1, got '2'"),
    ],
    ids=["short", "long", "not-a-number", "label"],
)
def test_bad_row_deep_in_a_file_is_reported_with_its_line(tmp_path, bad, problem):
    lines = _criteo_lines(4000)
    lines[3456] = bad  # line 3457
    src = write_lines(tmp_path / "big.txt", lines)
    with pytest.raises(UserError) as exc:
        run([src], tmp_path / "out", format="criteo")
    assert str(exc.value) == f"{src}, line 3457: {problem}"
    assert not (tmp_path / "out").exists()
    meta = run([src], tmp_path / "skip", format="criteo", bad_rows="skip")
    assert meta["skipped_rows"] == 1 and sum(s["rows"] for s in meta["splits"].values()) == 3999


def test_blank_line_deep_in_a_file_is_skipped_not_counted(tmp_path):
    lines = _criteo_lines(2000)
    src = write_lines(tmp_path / "blank.txt", [*lines[:1500], "", *lines[1500:]])
    meta = run([src], tmp_path / "out", format="criteo")
    assert meta["skipped_rows"] == 0 and sum(s["rows"] for s in meta["splits"].values()) == 2000


def test_native_criteo_reader_matches_the_checked_line_reader(tmp_path, monkeypatch):
    src = write_lines(tmp_path / "train.txt", _criteo_lines(3000))
    assert _same(*_native_and_checked(tmp_path, monkeypatch, [src], min_count=2))


def test_short_and_long_rows_that_balance_the_tab_count_are_still_found(tmp_path):
    lines = _criteo_lines(2000)
    lines[100] = "\t".join(["0"] * 39)  # one tab short ...
    lines[1500] = "\t".join(["0"] * 41)  # ... and one too many: the file's tab count is 39 per line on average
    src = write_lines(tmp_path / "ragged.txt", lines)
    with pytest.raises(UserError, match="line 101: expected 40 columns, found 39"):
        run([src], tmp_path / "out", format="criteo")


@pytest.mark.parametrize("values", [[-0.25, 0.5, 1.5, 7.0], [-5e6, 3.0, 4e6]], ids=["fractional", "wide-range"])
def test_numeric_tokens_that_are_not_small_integers_get_their_ids(tmp_path, values):
    """The log rule keeps v <= 2 as is: fractional or far-apart bins take the sorted-search lookup, not the table."""
    train = [f"{i % 2},{values[i % len(values)]}" for i in range(40)]
    src = write_lines(tmp_path / "d.csv", ["y,x", *train, "0,", "1,-0.75"])  # a missing value, an unseen one
    run([src], tmp_path / "out", format="csv", label="y", numeric=["x"], **ALL_TRAIN, min_count=2)
    vocab = vocab_of(tmp_path / "out", "x")
    bins = [v if v <= 2 else math.floor(math.log(v) ** 2) for v in values]
    assert set(vocab) == {str(float(b)) for b in bins}
    want = [vocab[str(float(bins[i % len(values)]))] for i in range(40)] + [1, 0]
    assert frame(tmp_path / "out")["x"].to_list() == want


def test_input_scan_hashes_and_counts_bytes_like_hashlib_and_numpy(tmp_path, monkeypatch):
    import hashlib

    import dcollapse.data.scan as scan_module

    monkeypatch.setattr(scan_module.InputScan, "BLOCK", 7)  # many blocks, a line split across them
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_bytes(b"0\t1\r\n1\t2\n\n")
    b.write_bytes(b"no newline at the end\t")
    with scan_module.InputScan([a, b], counted=b"\t\r") as scan:
        files = scan.result()
        digest = hashlib.sha256(b"".join(hashlib.sha256(p.read_bytes()).digest() for p in (a, b))).hexdigest()
        assert scan.input_hash() == "sha256:" + digest
    assert [(f.lines, f.counts) for f in files] == [(3, {b"\t": 2, b"\r": 1}), (1, {b"\t": 1, b"\r": 0})]


# ------------------------------------------------------------------ native reader vs line reader: edge cases


def _native_and_checked(tmp_path, monkeypatch, inputs, **opts) -> tuple[tuple, tuple]:
    """The dataset from the native Criteo reader (which must be taken) and from the checked line reader."""
    import dcollapse.data.preprocess as pp

    checked = pp._parse_checked
    monkeypatch.setattr(pp, "_parse_checked", lambda *a: pytest.fail("a well-formed file took the line reader"))
    run(inputs, tmp_path / "native", format="criteo", **opts)
    monkeypatch.setattr(pp, "_parse_checked", checked)
    monkeypatch.setattr(pp, "_parse_fast", lambda *a: None)
    run(inputs, tmp_path / "checked", format="criteo", **opts)
    return _outputs(tmp_path / "native"), _outputs(tmp_path / "checked")


def _same(got: tuple, want: tuple) -> bool:
    splits_equal = all(a.equals(b) for a, b in zip(got[1], want[1], strict=True))
    return got[0] == want[0] and got[2].equals(want[2]) and splits_equal


def test_a_numeric_field_of_only_spaces_is_missing_in_both_readers(tmp_path, monkeypatch):
    lines = [criteo_row(str(i % 2), [str(i % 3), "  "], ["a"]) for i in range(20)]
    lines[4] = criteo_row("1", [" ", "1"], ["b"])
    native, checked = _native_and_checked(tmp_path, monkeypatch, [write_lines(tmp_path / "t.txt", lines)], **ALL_TRAIN)
    assert _same(native, checked)
    assert native[1][0]["I1"][4] == 1 and set(native[1][0]["I2"].to_list()) == {1, 2}  # missing, except row 5


def test_a_byte_order_mark_is_ignored_by_every_reader(tmp_path, monkeypatch):
    lines = [criteo_row(str(i % 2), [str(i)], [f"c{i % 3}"]) for i in range(20)]
    src = tmp_path / "bom.txt"
    src.write_bytes(b"\xef\xbb\xbf" + "".join(line + "\n" for line in lines).encode())
    native, checked = _native_and_checked(tmp_path, monkeypatch, [src], **ALL_TRAIN)
    assert _same(native, checked) and native[1][0]["label"][0] == 0
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbflabel,a\n1,x\n0,y\n")
    meta = run([tmp_path / "bom.csv"], tmp_path / "csv", format="csv", **ALL_TRAIN)
    assert [f["name"] for f in meta["fields"]] == ["a"] and frame(tmp_path / "csv")["label"].to_list() == [1, 0]


def test_minus_zero_and_zero_are_one_token_whatever_comes_first(tmp_path):
    rows = ["1,-0", "0,0", "1,0", "0,-0", "1,1", "0,1"]
    a = write_lines(tmp_path / "a.csv", ["y,x", *rows])
    b = write_lines(tmp_path / "b.csv", ["y,x", *rows[1:], rows[0]])
    for src in (a, b):
        run([src], tmp_path / src.stem, format="csv", label="y", numeric=["x"], **ALL_TRAIN)
    assert vocab_of(tmp_path / "a", "x") == vocab_of(tmp_path / "b", "x") == {"0.0": 2, "1.0": 3}


@pytest.mark.parametrize("values", [["-1e20"], ["-1e18", "-1000000000000000128"], ["-9223372036854775808"]])
def test_numeric_tokens_of_large_magnitude_get_their_ids(tmp_path, values):
    """Integral bins beyond float precision or int64 (the log rule keeps v <= 2 as is) are looked up exactly."""
    src = write_lines(tmp_path / "t.txt", [criteo_row("1", [values[i % len(values)]]) for i in range(6)])
    run([src], tmp_path / "out", format="criteo", **ALL_TRAIN)
    vocab = vocab_of(tmp_path / "out", "I1")
    assert frame(tmp_path / "out")["I1"].to_list() == [vocab[str(float(values[i % len(values)]))] for i in range(6)]
    preprocess([str(src)], tmp_path / "applied", Options(apply=str(tmp_path / "out")))
    assert frame(tmp_path / "applied", "test").equals(frame(tmp_path / "out"))


def test_input_scan_holds_one_small_block_at_a_time(tmp_path):
    """The background read of a large input keeps only a block in memory (16 MiB blocks, each read by a new thread,
    left up to ~1 GB in glibc's per-thread arenas after a few dozen preprocess calls in one process)."""
    import tracemalloc

    from dcollapse.data.scan import InputScan

    src = tmp_path / "big.txt"
    src.write_bytes(b"1\t2\tabc\n" * 1_000_000)  # 8 MB
    tracemalloc.start()
    try:
        with InputScan([src], counted=b"\t\r") as scan:
            assert scan.result()[0].lines == 1_000_000
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


ODD_NUMBERS = ["", "0", "-0", "+3", " 7", "1e400", "-1e400", "nan", "  ", "-0.5", "-1e20", "1234567890123456789", "2.5"]
ODD_TOKENS = ["", "a", " a ", "é✓", '"q"', "NaN", "0", "x" * 300]


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from("01"),
            st.lists(st.sampled_from(ODD_NUMBERS), min_size=13, max_size=13),
            st.lists(st.sampled_from(ODD_TOKENS), min_size=26, max_size=26),
        ),
        min_size=1,
        max_size=30,
    )
)
@pytest.mark.slow
def test_native_and_line_reader_agree_on_odd_valid_values(tmp_path_factory, rows):
    tmp_path = tmp_path_factory.mktemp("odd")
    src = write_lines(tmp_path / "t.txt", [criteo_row(*row) for row in rows])
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert _same(*_native_and_checked(tmp_path, monkeypatch, [src], **ALL_TRAIN))


def test_parquet_floats_beyond_int64_nan_and_inf_are_values_not_missing(tmp_path):
    src = tmp_path / "d.parquet"
    values = [1e20, math.inf, math.nan, 2.0, None]
    pl.DataFrame({"y": [1, 0, 1, 0, 1], "c": values, "x": values}).write_parquet(src)
    run([src], tmp_path / "out", format="parquet", label="y", categorical=["c"], numeric=["x"], **ALL_TRAIN)
    assert set(vocab_of(tmp_path / "out", "c")) == {"1e+20", "inf", "NaN", "2"}
    assert set(vocab_of(tmp_path / "out", "x")) == {str(float(math.floor(math.log(1e20) ** 2))), "inf", "NaN", "2.0"}
    df = frame(tmp_path / "out")
    assert (df.head(4).select("c", "x") >= 2).to_numpy().all() and df["c"][4] == df["x"][4] == 1


# ------------------------------------------------------------------------------------------- tables of any shape


def kinds(meta: dict) -> dict[str, str]:
    return {f["name"]: f["kind"] for f in meta["fields"]}


def roles(meta: dict) -> dict[str, tuple[str | None, str]]:
    return {c["name"]: (c["kind"], c["why"]) for c in meta["columns"]}


TABLE = ["label,city,age,price,id", "1,Oslo,31,2.50,1", "0,Rome,45,10,2", "1,Oslo,31,,3", "0,Pisa,22,0.75,4"]


def test_csv_default_uses_every_column_by_kind_and_says_which_and_why(tmp_path):
    src = write_lines(tmp_path / "t.csv", TABLE)
    meta = run([src], tmp_path / "out", format="csv", drop=["id"], **ALL_TRAIN)
    assert kinds(meta) == {"city": "categorical", "age": "categorical", "price": "numeric"}
    assert [f["name"] for f in meta["fields"]] == ["city", "age", "price"]  # categorical first, then numeric
    r = roles(meta)
    assert r["id"] == (None, "--drop") and r["label"][0] == "label"
    assert r["city"][1].startswith("strings") and r["age"][1].startswith("integers")
    assert r["price"][1].startswith("floats")
    assert load_meta(tmp_path / "out")["columns"] == meta["columns"]  # kept in meta.json
    # Only --numeric given: the other columns are still used (they were dropped without a word before).
    only = run([src], tmp_path / "only", format="csv", numeric=["age"], **ALL_TRAIN)
    assert kinds(only) == {"city": "categorical", "id": "categorical", "age": "numeric", "price": "numeric"}
    assert roles(only)["age"] == ("numeric", "--numeric")
    result = cli(str(src), "--format", "csv", "--drop", "id", "--out", str(tmp_path / "cli"))
    assert result.exit_code == 0, result.output
    assert "column id" in result.stdout and "dropped" in result.stdout and "floats" in result.stdout


def test_an_inferred_numeric_column_with_text_later_names_the_override(tmp_path):
    rows = ["label,x", *[f"{i % 2},{i}.5" for i in range(1200)], "1,n/a"]
    src = write_lines(tmp_path / "t.csv", rows)
    with pytest.raises(UserError, match=r"line 1202: x: not a number: 'n/a' \(read as numeric .* --categorical x"):
        run([src], tmp_path / "out", format="csv", **ALL_TRAIN)
    meta = run([src], tmp_path / "out", format="csv", categorical=["x"], **ALL_TRAIN)
    assert kinds(meta) == {"x": "categorical"} and meta["fields"][0]["vocab_size"] == 2 + 1201


def test_parquet_kinds_from_types_and_unsupported_types_dropped_with_reason(tmp_path):
    import datetime as dt

    src = tmp_path / "t.parquet"
    pl.DataFrame({
        "y": [True, False, True], "n": [1, 2, 2], "s": ["a", None, "b"], "f": [0.5, 3.0, None],
        "when": [dt.date(2020, 1, k) for k in (1, 2, 3)],
    }).write_parquet(src)  # fmt: skip
    meta = run([src], tmp_path / "out", format="parquet", label="y", **ALL_TRAIN)
    assert kinds(meta) == {"n": "categorical", "s": "categorical", "f": "numeric"}
    assert roles(meta)["when"][0] is None and "--categorical" in roles(meta)["when"][1]
    assert frame(tmp_path / "out")["label"].to_list() == [1, 0, 1]
    run([src], tmp_path / "dated", format="parquet", label="y", categorical=["when"], **ALL_TRAIN)
    assert set(vocab_of(tmp_path / "dated", "when")) == {"2020-01-01", "2020-01-02", "2020-01-03"}


@pytest.mark.parametrize(
    ("values", "positive", "expected"),
    [
        (["-1", "1", "1", "-1"], None, [0, 1, 1, 0]),
        (["true", "False", "TRUE", "false"], None, [1, 0, 1, 0]),
        (["1.0", "0.0", "1", "0"], None, [1, 0, 1, 0]),
        ([">50K", "<=50K", ">50K", "<=50K"], ">50K", [1, 0, 1, 0]),
        (["yes", "no", "no", "maybe"], "yes", [1, 0, 0, 0]),
    ],
)
def test_labels_beyond_0_1(tmp_path, values, positive, expected):
    src = write_lines(tmp_path / "t.csv", ["a,income", *[f"x{k},{v}" for k, v in enumerate(values)]])
    meta = run([src], tmp_path / "out", format="csv", label="income", positive=positive, **ALL_TRAIN)
    assert frame(tmp_path / "out")["label"].to_list() == expected
    assert meta["splits"]["train"]["positives"] == sum(expected)


@pytest.mark.parametrize(
    ("values", "args", "message"),
    [
        (["yes", "no", "yes"], [], "label column 'y' must be 0/1, -1/1 or true/false, but its first rows hold 'no', "
         "'yes': pass --positive VALUE"),
        (["-1", "0", "1"], [], "its first rows hold '-1', '0': pass"),  # -1 with 0 is ambiguous
        (["yes", "no"], ["--positive", "Yes"], "--positive 'Yes' is no value of the label column 'y' (it holds 'no', "
         "'yes')"),
        (["-1", "1", "0"], [], "line 4: label column 'y' must be -1 or 1 (as in its first rows), got '0'"),
    ],
)  # fmt: skip
def test_unreadable_labels_are_one_line_errors_listing_the_values(tmp_path, monkeypatch, values, args, message):
    import dcollapse.data.formats as formats

    monkeypatch.setattr(formats, "SAMPLE_ROWS", 2)  # the last case: the 0 comes after the rows the rule is read from
    src = write_lines(tmp_path / "t.csv", ["a,y", *[f"x,{v}" for v in values]])
    result = cli(str(src), "--label", "y", *args, "--out", str(tmp_path / "out"))
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_header_handling_is_per_input(tmp_path):
    header, body = TABLE[0], TABLE[1:]
    a, b = write_lines(tmp_path / "a.csv", [header, *body[:2]]), write_lines(tmp_path / "b.csv", [header, *body[2:]])
    both = run([a, b], tmp_path / "both", format="csv", **ALL_TRAIN)
    bare = run([tmp_path / "a.csv", write_lines(tmp_path / "c.csv", body[2:])], tmp_path / "bare", format="csv",
               **ALL_TRAIN)  # fmt: skip
    assert frame(tmp_path / "bare").equals(frame(tmp_path / "both")) and bare["fields"] == both["fields"]
    assert any("c.csv: no header line" in n for n in bare["notes"])
    # Header-less file first: the header comes from the other input.
    swapped = run([tmp_path / "c.csv", tmp_path / "a.csv"], tmp_path / "swapped", format="csv", **ALL_TRAIN)
    assert swapped["splits"]["train"]["rows"] == 4
    # No input with a header: name the columns, or --no-header for col1..colN.
    with pytest.raises(UserError, match=r"c.csv, line 1 looks like data, not a header \(1, Oslo, 31, , 3\).*--columns"):
        run([tmp_path / "c.csv"], tmp_path / "x", format="csv", **ALL_TRAIN)
    named = run([tmp_path / "c.csv"], tmp_path / "named", format="csv", columns=["label,city,age,price,id"],
                **ALL_TRAIN)  # fmt: skip
    assert named["splits"]["train"]["rows"] == 2 and "city" in kinds(named)
    plain = run([tmp_path / "c.csv"], tmp_path / "plain", format="csv", header=False, label="col1", **ALL_TRAIN)
    assert list(kinds(plain)) == ["col2", "col3", "col5", "col4"]
    other = write_lines(tmp_path / "o.csv", ["label,town,age,price,id", *body])
    with pytest.raises(UserError, match="o.csv, line 1: header differs from .*a.csv"):
        run([tmp_path / "a.csv", other], tmp_path / "y", format="csv", **ALL_TRAIN)


def test_avazu_header_is_detected_per_input(tmp_path):
    header = ",".join(formats_module().AVAZU_COLUMNS)
    body = ["1,0,14102100," + ",".join(["x"] * 21), "2,1,14102623," + ",".join(["y"] * 21)]
    meta = run([write_lines(tmp_path / "a.csv", [header, body[0]]), write_lines(tmp_path / "b.csv", body[1:])],
               tmp_path / "out", format="avazu", **ALL_TRAIN)  # fmt: skip
    assert frame(tmp_path / "out")["label"].to_list() == [0, 1] and any("b.csv: no header" in n for n in meta["notes"])


def formats_module():
    import dcollapse.data.formats as formats

    return formats


def test_format_is_guessed_when_unambiguous(tmp_path):
    criteo = write_lines(tmp_path / "day.txt", [criteo_row("1", ["3"], ["a"]), criteo_row("0", ["4"], ["b"])])
    assert run([criteo], tmp_path / "c", **ALL_TRAIN)["options"]["format"] == "criteo"
    src = tmp_path / "t.parquet"
    pl.DataFrame({"label": [0, 1], "a": ["x", "y"]}).write_parquet(src)
    meta = run([src], tmp_path / "p", **ALL_TRAIN)
    assert meta["options"]["format"] == "parquet" and "format: parquet (from the .parquet extension" in meta["notes"][0]
    tsv = write_lines(tmp_path / "t.tsv", ["label\tcity", "1\tOslo", "0\tRome"])
    meta = run([tsv], tmp_path / "t", **ALL_TRAIN)
    assert meta["options"]["separator"] == "\t" and kinds(meta) == {"city": "categorical"}
    libfm = write_lines(tmp_path / "d.txt", ["1 3:1 10:1", "-1 4:1 11:1"])
    assert run([libfm], tmp_path / "l", **ALL_TRAIN)["options"]["format"] == "libfm"


@pytest.mark.parametrize(
    ("name", "lines", "args", "message"),
    [
        ("t.dat", ["label,a", "1,x"], [], "t.dat: cannot tell the input format: pass --format (one of criteo, avazu, "
         "csv, parquet, libfm, movielens)"),
        ("t.csv", ["label\tcity", "1\tOslo"], [], "missing column 'label' (have: label\\tcity); the first line is one "
         "column with $'\\t' in it: pass --separator $'\\t' or --format criteo for Criteo files"),
        ("t.csv", ["label,a", "1,x"], ["--drop", "b"], "t.csv: missing column 'b'"),
        ("t.csv", ["label,a", "1,x"], ["--drop", "a"], "no feature columns besides the label"),
        ("t.csv", ["label,a", "1,x"], ["--drop", "a", "--categorical", "a"], "column(s) a, label given more than one"),
        ("t.txt", [criteo_row()], ["--format", "criteo", "--positive", "1"], "--positive is for csv/parquet input"),
    ],
)  # fmt: skip
def test_format_and_column_errors_say_what_to_pass(tmp_path, name, lines, args, message):
    src = write_lines(tmp_path / name, lines)
    result = cli(str(src), *args, "--out", str(tmp_path / "out"))
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_apply_reads_columns_as_the_training_dataset_did(tmp_path):
    train = write_lines(tmp_path / "train.csv", ["y,c,x", "yes,a,0.5", "no,b,2.0", "yes,a,1.5"])
    base = run([train], tmp_path / "base", format="csv", label="y", positive="yes", **ALL_TRAIN)
    # The new file's first rows look different (x all integers, an extra column): the training kinds still hold.
    new = write_lines(tmp_path / "new.csv", ["y,c,x,extra", "no,a,2,q", "yes,b,1,r"])
    applied = preprocess([str(new)], tmp_path / "applied", Options(apply=str(tmp_path / "base")))
    assert applied["fields"] == base["fields"] and roles(applied)["extra"][0] is None
    got = frame(tmp_path / "applied", "test")
    assert got["label"].to_list() == [0, 1] and got["x"][0] == frame(tmp_path / "base")["x"][1]  # 2 is 2.0


def _criteo_split_files(folder: Path) -> list[Path]:
    """Three small Criteo files (train, valid, test) of fixed content: missing values, log-rule bins on both sides
    of 2, negative values, tokens rarer than --min-count 2, tokens unseen in train, a field constant in train."""
    files = []
    for k, (name, rows) in enumerate([("train", 600), ("valid", 150), ("test", 150)]):
        lines = []
        for i in range(rows):
            n = i + 1000 * k
            ints = ["" if (n * 7 + j) % 9 == 0 else str((n * (j + 3)) % (40 + 7 * j) - 2) for j in range(13)]
            cats = ["" if (n + j) % 11 == 0 else f"{(n * n + 31 * j) % (3 + 17 * j):x}" for j in range(25)]
            cats.append("const" if name == "train" else f"new{n % 3}")
            lines.append(criteo_row(str((n * 5) % 7 % 2), ints, cats))
        files.append(write_lines(folder / f"{name}.txt", lines))
    return files


def _dataset_digest(out: Path) -> str:
    """sha256 of a dataset directory's content: every Parquet file as CSV text, every JSON file without the
    dcollapse version and the options echoed back (stable across Polars' Parquet writer versions and new options,
    but not across a changed value or row)."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(out.iterdir()):
        if path.suffix == ".parquet":
            digest.update(path.name.encode() + pl.read_parquet(path).write_csv().encode())
        else:
            doc = json.loads(path.read_text())
            doc.pop("dcollapse_version", None)
            doc.pop("options", None)
            digest.update(path.name.encode() + json.dumps(doc).encode())
    return digest.hexdigest()


@pytest.mark.parametrize("reader", ["native", "line"])
def test_criteo_dataset_content_is_unchanged(tmp_path, monkeypatch, reader):
    """The whole dataset written from fixed Criteo files (ids, row order, vocabularies, OOV shares, warnings), by
    either reader, matches the one recorded before the preprocessing passes were fused; a deliberate change of the
    output updates the digest."""
    from dcollapse.data import preprocess as module

    def refused(*args):
        raise AssertionError("the line reader was used")

    if reader == "native":
        monkeypatch.setattr(module, "_parse_checked", refused)
    else:
        monkeypatch.setattr(module, "_parse_fast", lambda *args: None)  # as for a file the native reader refuses
    files = _criteo_split_files(tmp_path)
    meta = run(files, tmp_path / "d", format="criteo", split_files=True, min_count=2)
    assert any("constant in the train split" in note for note in meta["notes"])
    assert any("map to the OOV id" in note for note in meta["notes"])
    assert _dataset_digest(tmp_path / "d") == GOLDEN_CRITEO_DIGEST


GOLDEN_CRITEO_DIGEST = "51bf8e5577e49d3ff46a001b9911542c85a5701dfbd5cab8c7964639561d85e9"
