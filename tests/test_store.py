"""The count store: round trip, open readers (zarr, xarray), integrity record, merge rules,
model identity rules, refusals, stores of lna 0.1."""
import json

import numpy as np
import pytest

import legacy
from lna.core.errors import LnaError
from lna.storage.manifest import Counted
from lna.profiling.merge import merge
from lna.storage.counts import CountStore, check_compatible
from lna.storage.store import is_store, open_store, save_store

STRONG = "weights-sha256:" + "ab" * 16


def make(langs=("en", "zh"), layers=3, neurons=5, seed=0, meta=None, samples=None):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(50, 100, len(langs))
    counts = rng.integers(0, 50, (layers, len(langs), neurons))
    return CountStore(counts, tokens, list(langs), {"model": "org/m", **(meta or {})}, samples or {})


def counted(*ids, prefix="d"):
    return Counted(np.array(ids, np.uint64), [f"{prefix}/{i}" for i in ids])


def test_round_trip(tmp_path):
    s = make(samples={"en": counted(5, 3, 9), "zh": Counted(unknown=[{"source": "import:x"}])})
    s.samples["en"].keys[2] = "d/\n9"  # keys are kept one a line: a newline in one becomes a space
    s.complete = False
    save_store(s, tmp_path / "s")
    assert is_store(tmp_path / "s")
    r = open_store(tmp_path / "s")
    np.testing.assert_array_equal(r.counts, s.counts)
    np.testing.assert_array_equal(r.tokens, s.tokens)
    assert r.languages == ["en", "zh"] and r.meta == s.meta and r.complete is False
    assert r.samples["en"].ids.tolist() == [3, 5, 9] and r.samples["en"].keys == ["d/3", "d/5", "d/ 9"]
    assert r.samples["zh"].unknown == [{"source": "import:x"}] and not len(r.samples["zh"].ids)
    # Overwriting in place keeps a valid store and leaves no temporary folder behind.
    save_store(make(seed=1), tmp_path / "s")
    assert open_store(tmp_path / "s").counts.sum() == make(seed=1).counts.sum()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_readable_with_zarr_and_xarray(tmp_path):
    import xarray as xr
    import zarr

    s = make(langs=("en", "zh", "ja"), samples={"zh": counted(7, 8)})
    save_store(s, tmp_path / "s")
    g = zarr.open_group(str(tmp_path / "s"), mode="r")
    assert g["counts"].metadata.dimension_names == ("layer", "language", "neuron")
    np.testing.assert_array_equal(g["counts"][...], s.counts)
    assert g["sample_id"][...].tolist() == [7, 8] and g["sample_keys"][...].tobytes() == b"d/7\nd/8"
    assert g.attrs["sample_counts"] == {"zh": 2}
    ds = xr.open_zarr(tmp_path / "s", consolidated=False)
    assert ds.counts.dims == ("layer", "language", "neuron")
    np.testing.assert_array_equal(ds.counts.sel(language="ja").values, s.counts[:, 2])
    np.testing.assert_array_equal(ds.tokens.sel(language="zh").values, s.tokens[1])


def test_integrity_record_is_independent_checksums(tmp_path):
    """The record holds zlib CRC-32s of each language's values, the token totals, and the
    sample list's checksums."""
    import zlib

    s = make(langs=("en", "zh", "ja"), samples={"ja": counted(1, 2)})
    save_store(s, tmp_path / "s")
    rec = json.loads((tmp_path / "s" / "zarr.json").read_text())["attributes"]["integrity"]
    for k, lang in enumerate(s.languages):
        assert rec["counts"][lang] == zlib.crc32(s.counts[:, k, :].astype("<i8").tobytes())
        assert rec["tokens"][lang] == s.tokens[k]
    assert rec["samples"] == {"ja": {"n": 2, "crc32": zlib.crc32(np.array([1, 2], "<u8").tobytes())}}
    assert rec["sample_keys"] == zlib.crc32(b"d/1\nd/2")


def test_probabilities():
    s = CountStore(np.array([[[3, 0], [0, 0]]]), np.array([6, 0]), ["en", "zh"])
    np.testing.assert_array_equal(s.probabilities(), [[[0.5, 0.0], [0.0, 0.0]]])


# -- merge ---------------------------------------------------------------------------------------
def test_merge_sums_disjoint_shards_and_adds_languages():
    a = make(seed=1, samples={"en": counted(1, 2, 3), "zh": counted(10)})
    b = make(seed=2, samples={"en": counted(4, 5), "zh": counted(11, 12)})
    c = make(langs=("ja",), seed=3, samples={"ja": Counted(unknown=[{"source": "import:j"}])})
    m = merge([a, b, c])
    assert m.languages == ["en", "zh", "ja"]
    np.testing.assert_array_equal(m.counts[:, :2], a.counts + b.counts)
    np.testing.assert_array_equal(m.counts[:, 2], c.counts[:, 0])
    np.testing.assert_array_equal(m.tokens, np.append(a.tokens + b.tokens, c.tokens))
    assert sorted(m.samples["en"].ids.tolist()) == [1, 2, 3, 4, 5]
    assert m.samples["ja"].unknown == [{"source": "import:j"}]
    # Inputs untouched.
    assert a.samples["en"].ids.tolist() == [1, 2, 3] and a.counts.shape[1] == 2


def test_merge_refuses_partial_overlap_naming_count_and_example():
    a = make(seed=1, samples={"en": counted(1, 2, 3, 4, prefix="demo/en"), "zh": counted(9)})
    b = make(seed=2, samples={"en": counted(3, 4, 5, prefix="other/en"), "zh": counted(8)})
    with pytest.raises(LnaError, match=r"cannot merge en: 2 of its 3 samples in B are already counted in A "
                                       r"\(e.g. other/en/3 is demo/en/3 there: same tokens\)"):
        merge([a, b], names=["A", "B"])


@pytest.mark.parametrize("kind, words", [
    ("import", "imported counts"),
    ("legacy", "recorded its samples by position"),
    ("unrecorded", "samples are not recorded"),
])
def test_merge_refuses_same_language_of_unknown_samples(kind, words):
    unknown = {"import": Counted(unknown=[{"source": "import:x"}]),
               "legacy": Counted(unknown=[legacy.part("sha256:abc", [True, True])]),
               "unrecorded": None}[kind]
    a = make(seed=1, samples={"en": unknown} if unknown else {})
    b = make(langs=("en",), seed=2, samples={"en": counted(1)})
    with pytest.raises(LnaError, match=words):
        merge([a, b])
    with pytest.raises(LnaError, match=words):
        merge([b, a])
    merge([a, make(langs=("ja",), seed=3, samples={"ja": counted(1)})])  # other languages: fine


def test_merge_refuses_the_same_import_twice():
    a = make(samples={"en": Counted(unknown=[{"source": "import:x"}])})
    with pytest.raises(LnaError, match="count them twice"):
        merge([a, make(samples={"en": Counted(unknown=[{"source": "import:x"}])})])


def test_language_with_no_tokens_adds_nothing():
    a = make(langs=("en",), samples={"en": counted(1)})
    empty = CountStore.empty(["en"], 3, 5, {"model": "org/m"})
    m = merge([a, empty])
    np.testing.assert_array_equal(m.counts, a.counts)


@pytest.mark.parametrize("change, what", [
    ({"meta": {"model": "org/other"}}, "different models"),
    ({"neurons": 6}, "neurons differs"),
    ({"layers": 4}, "layers differs"),
    ({"meta": {"counted": "all-tokens"}}, "counted differs"),
])
def test_merge_refuses_incompatible(change, what):
    a = make()
    b = make(layers=change.get("layers", 3), neurons=change.get("neurons", 5), meta=change.get("meta"))
    with pytest.raises(LnaError, match=what):
        merge([a, b])
    with pytest.raises(LnaError, match=what):
        check_compatible(a, b)


def test_identity_rules(capsys):
    def store(fp=None, legacy_fp=None, model="org/m", ids=(1,)):
        meta = {"model": model, "model_fingerprint": fp, "model_fingerprint_legacy": legacy_fp}
        return make(langs=("en",), seed=int(ids[0]), meta={k: v for k, v in meta.items() if v},
                    samples={"en": counted(*ids)})

    # the weights decide, whatever the name
    m = merge([store(STRONG, "aaaa"), store(STRONG, "aaaa", model="/local/copy", ids=(2,))])
    assert m.meta["model_fingerprint"] == STRONG
    with pytest.raises(LnaError, match="different models .*whose weights differ"):
        merge([store(STRONG, "aaaa"), store("weights-sha256:" + "cd" * 16, "aaaa", ids=(2,))])
    # lna 0.1's fingerprint against this lna's legacy one: compared, noted, and the sum keeps the weaker
    capsys.readouterr()
    m = merge([store(STRONG, "aaaa"), store("aaaa", ids=(2,))], names=["new.zarr", "old.zarr"])
    assert m.meta["model_fingerprint"] == "aaaa" and "model_fingerprint_legacy" not in m.meta
    assert "old.zarr records the older, weaker model identity" in capsys.readouterr().err
    with pytest.raises(LnaError, match="different models"):
        merge([store(STRONG, "aaaa"), store("bbbb", ids=(2,))])
    # in-memory models never match
    with pytest.raises(LnaError, match="built in memory"):
        merge([store("unsaved"), store("unsaved", ids=(2,))])
    # a side without fingerprint (imports) is compared by name, and the sum claims no fingerprint
    m = merge([store(STRONG), store(ids=(2,))])
    assert "model_fingerprint" not in m.meta
    with pytest.raises(LnaError, match="different models"):
        merge([store(STRONG), store(model="org/x", ids=(2,))])


def test_merge_of_import_keeps_provenance():
    a = make(meta={"provenance": "import"})
    a.counts[0, 0, 0] = a.tokens[0] + 5  # the release's noisy two-pass differences allow p > 1
    b = make(langs=("ja",), seed=4)
    m = merge([b, a])
    assert m.meta["provenance"] == "import"


# -- validation, refusals ------------------------------------------------------------------------
def test_validation():
    with pytest.raises(LnaError, match="negative"):
        CountStore(-np.ones((1, 1, 2)), np.ones(1), ["en"])
    with pytest.raises(LnaError, match="above its token totals"):
        CountStore(np.full((1, 1, 2), 5), np.array([4]), ["en"])
    with pytest.raises(LnaError, match="twice"):
        CountStore(np.zeros((1, 2, 2)), np.ones(2), ["en", "en"])
    with pytest.raises(LnaError, match="inconsistent"):
        CountStore(np.zeros((1, 2, 2)), np.ones(3), ["en", "zh"])


def test_open_errors(tmp_path):
    with pytest.raises(LnaError, match="no such count store"):
        open_store(tmp_path / "missing")
    (tmp_path / "text").write_text("hello")
    with pytest.raises(LnaError, match="not an lna count store"):
        open_store(tmp_path / "text")
    s = make()
    s.complete = False
    save_store(s, tmp_path / "partial")
    open_store(tmp_path / "partial")
    with pytest.raises(LnaError, match="unfinished profile"):
        open_store(tmp_path / "partial", allow_partial=False)
    with pytest.raises(LnaError, match="not an lna count store"):
        save_store(s, tmp_path / "text")
    assert (tmp_path / "text").read_text() == "hello"


def test_damaged_attributes(tmp_path):
    save_store(make(), tmp_path / "s")
    meta = json.loads((tmp_path / "s" / "zarr.json").read_text())
    del meta["attributes"]["languages"]
    (tmp_path / "s" / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(LnaError, match="damaged"):
        open_store(tmp_path / "s")
    (tmp_path / "s" / "zarr.json").write_text('{"attributes": {"form')
    with pytest.raises(LnaError, match="damaged count store: zarr.json is unreadable"):
        open_store(tmp_path / "s")


def test_interrupted_swap_recovers(tmp_path):
    save_store(make(), tmp_path / "s")
    (tmp_path / "s").rename(tmp_path / ".s.previous")  # crash between the two renames
    np.testing.assert_array_equal(open_store(tmp_path / "s").counts, make().counts)


# -- stores of lna 0.1 ---------------------------------------------------------------------------
def test_legacy_store_opens_with_a_note(tmp_path, capsys):
    s = make(langs=("en", "zh", "ja"))
    s.tokens[2], s.counts[:, 2] = 0, 0  # a language that counted nothing: lna 0.1 wrote no chunk for it
    parts = {"en": [legacy.part("sha256:e", [1, 1, 0])], "zh": [{"source": "import:z", "total": None, "done": "all"}]}
    legacy.write_store(tmp_path / "old", s.counts, s.tokens, s.languages, {"model": "org/m",
                       "model_fingerprint": "0123456789abcdef"}, parts, complete=False)
    assert not (tmp_path / "old" / "counts" / "c" / "0" / "2" / "0").exists()
    r = open_store(tmp_path / "old")
    np.testing.assert_array_equal(r.counts, s.counts)
    assert r.samples["en"].unknown == parts["en"] and r.complete is False
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "written by an older lna (lna-counts/1)" in err and "weaker model identity" in err
    # Saved again by this lna, it gets the record and keeps its (unknown) samples.
    save_store(r, tmp_path / "new")
    assert open_store(tmp_path / "new").samples["zh"].unknown == parts["zh"]
    assert "older" not in capsys.readouterr().err
