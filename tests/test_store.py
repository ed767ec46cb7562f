"""The count store: round trip, open readers (zarr, xarray), merge, refusals, resume bookkeeping."""
import json

import numpy as np
import pytest

from lna.errors import LnaError
from lna.store import CountStore, check_compatible, is_store, merge, open_store, save_store


def make(langs=("en", "zh"), layers=3, neurons=5, seed=0, meta=None):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(50, 100, len(langs))
    counts = rng.integers(0, 50, (layers, len(langs), neurons))
    return CountStore(counts, tokens, list(langs), {"model": "org/m", **(meta or {})})


def test_round_trip(tmp_path):
    s = make()
    s.mark_done("en", "mgsm", 10, np.arange(10) < 4)
    s.complete = False
    save_store(s, tmp_path / "s")
    assert is_store(tmp_path / "s")
    r = open_store(tmp_path / "s")
    np.testing.assert_array_equal(r.counts, s.counts)
    np.testing.assert_array_equal(r.tokens, s.tokens)
    assert r.languages == ["en", "zh"] and r.meta == s.meta and r.complete is False
    np.testing.assert_array_equal(r.done_mask("en", "mgsm", 10), np.arange(10) < 4)
    assert not r.done_mask("zh", "mgsm", 10).any()
    # Overwriting in place keeps a valid store and leaves no temporary folder behind.
    save_store(make(seed=1), tmp_path / "s")
    assert open_store(tmp_path / "s").counts.sum() == make(seed=1).counts.sum()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_readable_with_zarr_and_xarray(tmp_path):
    import xarray as xr
    import zarr

    s = make(langs=("en", "zh", "ja"))
    save_store(s, tmp_path / "s")
    g = zarr.open_group(str(tmp_path / "s"), mode="r")
    assert g["counts"].metadata.dimension_names == ("layer", "language", "neuron")
    np.testing.assert_array_equal(g["counts"][...], s.counts)
    ds = xr.open_zarr(tmp_path / "s", consolidated=False)
    assert ds.counts.dims == ("layer", "language", "neuron")
    np.testing.assert_array_equal(ds.counts.sel(language="ja").values, s.counts[:, 2])
    np.testing.assert_array_equal(ds.tokens.sel(language="zh").values, s.tokens[1])


def test_probabilities():
    s = CountStore(np.array([[[3, 0], [0, 0]]]), np.array([6, 0]), ["en", "zh"])
    np.testing.assert_array_equal(s.probabilities(), [[[0.5, 0.0], [0.0, 0.0]]])


def test_merge_sums_shards_and_adds_languages():
    a, b, c = make(seed=1), make(seed=2), make(langs=("ja",), seed=3)
    a.mark_done("en", "mgsm", 8, np.arange(8) < 4)
    b.mark_done("en", "mgsm", 8, np.arange(8) >= 4)
    m = merge([a, b, c])
    assert m.languages == ["en", "zh", "ja"]
    np.testing.assert_array_equal(m.counts[:, :2], a.counts + b.counts)
    np.testing.assert_array_equal(m.counts[:, 2], c.counts[:, 0])
    np.testing.assert_array_equal(m.tokens, np.append(a.tokens + b.tokens, c.tokens))
    assert m.done_mask("en", "mgsm", 8).all()
    # Inputs untouched.
    assert a.done_mask("en", "mgsm", 8).sum() == 4 and a.counts.shape[1] == 2


def test_merge_refuses_double_counting():
    a, b = make(seed=1), make(seed=2)
    a.mark_done("en", "mgsm", 8, np.arange(8) < 5)
    b.mark_done("en", "mgsm", 8, np.arange(8) >= 4)
    with pytest.raises(LnaError, match="count them twice"):
        merge([a, b])


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


def test_fingerprint_decides_model_identity():
    a = make(meta={"model_fingerprint": "abc"})
    b = make(meta={"model": "/local/copy", "model_fingerprint": "abc"})
    merge([a, b])  # same weights under another name: fine
    c = make(meta={"model_fingerprint": "xyz"})
    with pytest.raises(LnaError, match="different models"):
        merge([a, c])


def test_merge_of_import_keeps_provenance():
    a = make(meta={"provenance": "import"})
    a.counts[0, 0, 0] = a.tokens[0] + 5  # the release's noisy two-pass differences allow p > 1
    b = make(seed=4)
    m = merge([b, a])
    assert m.meta["provenance"] == "import"


def test_validation():
    with pytest.raises(LnaError, match="negative"):
        CountStore(-np.ones((1, 1, 2)), np.ones(1), ["en"])
    with pytest.raises(LnaError, match="above its token totals"):
        CountStore(np.full((1, 1, 2), 5), np.array([4]), ["en"])
    with pytest.raises(LnaError, match="twice"):
        CountStore(np.zeros((1, 2, 2)), np.ones(2), ["en", "en"])
    with pytest.raises(LnaError, match="inconsistent"):
        CountStore(np.zeros((1, 2, 2)), np.ones(3), ["en", "zh"])


def test_done_mask_refuses_changed_data():
    s = make()
    s.mark_done("en", "mgsm", 10, np.ones(10, bool))
    with pytest.raises(LnaError, match="data changed"):
        s.done_mask("en", "mgsm", 12)


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


def test_damaged_store(tmp_path):
    save_store(make(), tmp_path / "s")
    meta = json.loads((tmp_path / "s" / "zarr.json").read_text())
    del meta["attributes"]["languages"]
    (tmp_path / "s" / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(LnaError, match="damaged"):
        open_store(tmp_path / "s")


def test_interrupted_swap_recovers(tmp_path):
    save_store(make(), tmp_path / "s")
    (tmp_path / "s").rename(tmp_path / ".s.previous")  # crash between the two renames
    np.testing.assert_array_equal(open_store(tmp_path / "s").counts, make().counts)
