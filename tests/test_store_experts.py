"""Count stores with an expert dimension (lna-counts/3): round trip, plain zarr readers,
integrity (an altered or missing chunk names its array and language), merge, dense stores
still written as lna-counts/2, refusals."""
import json
import shutil
import zlib

import numpy as np
import pytest

from lna.core.errors import LnaError
from lna.storage.manifest import Counted
from lna.profiling.merge import merge
from lna.storage.counts import CountStore
from lna.storage.store import open_store, save_store


def make_moe(langs=("en", "zh"), layers=3, experts=4, width=6, always_on=5, seed=0, meta=None):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(50, 100, len(langs))
    routed = rng.integers(0, 50, (layers, experts, len(langs)))
    expert_counts = rng.integers(0, 1000, (layers, experts, len(langs), width)) % (routed[..., None] + 1)
    counts = rng.integers(0, 50, (layers, len(langs), always_on))
    samples = {lang: Counted(np.array([seed * 100 + k], np.uint64), [f"d/{seed}/{k}"]) for k, lang in enumerate(langs)}
    return CountStore(counts, tokens, list(langs), {"model": "org/moe", **(meta or {})}, samples,
                      expert_counts=expert_counts, routed=routed)


@pytest.mark.parametrize("always_on", [5, 0])
def test_round_trip(tmp_path, always_on):
    s = make_moe(always_on=always_on)
    save_store(s, tmp_path / "s")
    attrs = json.loads((tmp_path / "s" / "zarr.json").read_text())["attributes"]
    assert attrs["format"] == "lna-counts/3"
    r = open_store(tmp_path / "s")
    assert r.has_experts and r.meta["experts"] == 4 and r.meta["expert_neurons"] == 6
    for name in ("counts", "tokens", "expert_counts", "routed"):
        np.testing.assert_array_equal(getattr(r, name), getattr(s, name))
    rec = attrs["integrity"]
    assert rec["routed"]["zh"] == zlib.crc32(np.ascontiguousarray(s.routed[:, :, 1]).astype("<i8").tobytes())


def test_readable_with_zarr(tmp_path):
    import zarr

    s = make_moe()
    save_store(s, tmp_path / "s")
    g = zarr.open_group(str(tmp_path / "s"), mode="r")
    assert g["expert_counts"].metadata.dimension_names == ("layer", "expert", "language", "neuron")
    np.testing.assert_array_equal(g["expert_counts"][:, :, 1], s.expert_counts[:, :, 1])
    np.testing.assert_array_equal(g["routed"][...], s.routed)


def test_dense_stores_keep_their_format(tmp_path):
    s = CountStore(np.ones((2, 1, 3)), np.array([4]), ["en"])
    save_store(s, tmp_path / "d")
    assert json.loads((tmp_path / "d" / "zarr.json").read_text())["attributes"]["format"] == "lna-counts/2"
    assert not open_store(tmp_path / "d").has_experts


def test_altered_chunk_names_array_and_language(tmp_path):
    s = make_moe()
    save_store(s, tmp_path / "s")
    other = make_moe(seed=1)
    save_store(other, tmp_path / "o")
    # the zh chunk of another store's routed tokens, swapped in
    chunk = tmp_path / "s" / "routed" / "c" / "0" / "0" / "1"
    shutil.copy(tmp_path / "o" / "routed" / "c" / "0" / "0" / "1", chunk)
    with pytest.raises(LnaError, match=r"array routed, language zh: values differ") as err:
        open_store(tmp_path / "s")
    assert "\n" not in str(err.value)
    save_store(s, tmp_path / "s")
    next((tmp_path / "s" / "expert_counts").rglob("c/0/0/0/0")).unlink()
    with pytest.raises(LnaError, match=r"array expert_counts, language en: chunk missing"):
        open_store(tmp_path / "s")


def test_validation():
    s = make_moe()
    with pytest.raises(LnaError, match="above their routed"):
        CountStore(s.counts, s.tokens, s.languages, expert_counts=s.routed[..., None] + 1, routed=s.routed)
    with pytest.raises(LnaError, match="one of expert_counts and routed"):
        CountStore(s.counts, s.tokens, s.languages, expert_counts=s.expert_counts)
    with pytest.raises(LnaError, match="with and without experts"):
        s.add([0], s.counts[:, :1], s.tokens[:1])


def test_select_with_language_and_merge():
    a, b = make_moe(langs=("en",), seed=2), make_moe(langs=("en", "ja"), seed=3)
    m = merge([a, b])
    assert m.languages == ["en", "ja"]
    np.testing.assert_array_equal(m.expert_counts[:, :, 0], a.expert_counts[:, :, 0] + b.expert_counts[:, :, 0])
    np.testing.assert_array_equal(m.routed[:, :, 1], b.routed[:, :, 1])
    np.testing.assert_array_equal(a.expert_counts, make_moe(langs=("en",), seed=2).expert_counts)  # inputs kept
    sel = m.select(["ja"])
    np.testing.assert_array_equal(sel.routed[:, :, 0], b.routed[:, :, 1])
    with pytest.raises(LnaError, match="experts differs"):
        merge([a, make_moe(langs=("en",), experts=5, seed=4)])
    with pytest.raises(LnaError):
        merge([a, CountStore(np.zeros((3, 1, 5)), np.array([1]), ["en"], {"model": "org/moe"},
                             {"en": Counted(np.array([999], np.uint64), ["d/999"])})])
