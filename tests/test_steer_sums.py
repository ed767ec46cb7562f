"""Activation sums (issue 11, part 1): the runner's per-language sums of act(gate) against a
float64 hook reference, and the store, integrity record, merge and profile rules for them.

Tolerance of the sums: per cell, |lna - reference| <= 1e-6 * sum over the cell's tokens of
|act(gate)|, about 8 float32 epsilons of the cell's absolute sum. The reference computes
act(gate) in float64 from the gate values of an unmodified transformers model run one
sequence at a time; lna's gates come from packed batches (another fp32 summation order in
the matmuls: a few epsilons per gate, and |act'| <= 1.1) and the kernel adds them in fp32
within a forward batch. One token counted in the wrong language or not at all moves a cell
by that token's |act|, about 1/n of the cell's absolute sum over n tokens: 1e-3 of it and
more here, a thousand times the tolerance. Measured: at most 2.2e-7 (tiny Llama and Gemma).
"""
import json

import numpy as np
import pytest

import naive
from conftest import random_samples
from lna.core.errors import LnaError
from lna.storage.manifest import Counted
from lna.profiling.merge import merge
from lna.storage.counts import CountStore
from lna.storage.store import open_store, save_store

LANGS = ["en", "zh", "ja", "sw"]
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    from lna.models.tiny import build_tiny

    return str(build_tiny(tmp_path_factory.mktemp("gemma") / "m", "gemma", hidden=64, layers=2, intermediate=96,
                          heads=2, kv_heads=1, seed=3))


@pytest.mark.parametrize("which", ["llama", "mistral", "gemma"])
def test_runner_sums_equal_float64_hook_reference(tiny_models, gemma, which):
    from lna.runners.hf import HFRunner

    path = gemma if which == "gemma" else tiny_models[which]
    runner = HFRunner(path, token_budget=160, max_row_tokens=90)  # several batches, split groups, padding
    samples = random_samples(1, LANGS)
    counts, tokens, sums, active = runner.count(samples, LANGS, sums=True)
    ref_sums, ref_active, scale = naive.activation_sums(path, samples, LANGS,
                                                        "gelu_tanh" if which == "gemma" else "silu")
    assert sums.dtype == active.dtype == np.float64 and sums.shape == counts.shape
    assert (np.abs(sums - ref_sums) <= TOLERANCE * scale).all()
    assert (np.abs(active - ref_active) <= TOLERANCE * scale).all()
    # the same call without sums counts the same
    plain_counts, plain_tokens = runner.count(samples, LANGS)
    assert np.array_equal(plain_counts, counts) and np.array_equal(plain_tokens, tokens)
    # a neuron that never fired has an active sum of exactly 0
    assert (active[counts == 0] == 0).all() and (active >= 0).all()


def make(langs=("en", "zh"), layers=2, neurons=4, seed=0, sums=True, samples=None):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(50, 100, len(langs))
    counts = rng.integers(1, 50, (layers, len(langs), neurons))
    extra = {}
    if sums:
        extra = {"sums": rng.normal(size=counts.shape) * 10, "active_sums": counts * rng.random(counts.shape)}
    return CountStore(counts, tokens, list(langs), {"model": "org/m"}, samples or {}, **extra)


def counted(*ids):
    return Counted(np.array(ids, np.uint64), [f"d/{i}" for i in ids])


def test_store_round_trip_and_open_readers(tmp_path):
    import xarray as xr
    import zarr

    s = make(langs=("en", "zh", "ja"))
    save_store(s, tmp_path / "s")
    r = open_store(tmp_path / "s")
    assert r.has_sums
    np.testing.assert_array_equal(r.sums, s.sums)  # float64 kept bit for bit
    np.testing.assert_array_equal(r.active_sums, s.active_sums)
    g = zarr.open_group(str(tmp_path / "s"), mode="r")
    assert g["sums"].metadata.dimension_names == ("layer", "language", "neuron") and g["sums"].dtype == np.float64
    ds = xr.open_zarr(tmp_path / "s", consolidated=False)
    mean = ds.sums / ds.tokens
    assert mean.dims == ("layer", "language", "neuron")
    np.testing.assert_allclose(mean.sel(language="ja").values, s.sums[:, 2] / s.tokens[2])
    np.testing.assert_allclose(r.mean_activation("ja"), s.sums[:, 2] / s.tokens[2])
    np.testing.assert_allclose(r.mean_activation("zh", "active-mean"), s.active_sums[:, 1] / s.counts[:, 1])


def test_store_without_sums_still_opens_and_says_what_is_missing(tmp_path):
    s = make(sums=False)
    save_store(s, tmp_path / "s")
    r = open_store(tmp_path / "s")
    assert not r.has_sums and not (tmp_path / "s" / "sums").exists()
    assert "integrity" in json.loads((tmp_path / "s" / "zarr.json").read_text())["attributes"]
    with pytest.raises(LnaError, match="no activation sums.*--sums"):
        r.mean_activation("en")


def test_integrity_covers_the_sums(tmp_path):
    import zlib

    s = make(langs=("en", "zh"))
    save_store(s, tmp_path / "s")
    rec = json.loads((tmp_path / "s" / "zarr.json").read_text())["attributes"]["integrity"]
    for name in ("sums", "active_sums"):
        for k, lang in enumerate(s.languages):
            assert rec[name][lang] == zlib.crc32(np.ascontiguousarray(getattr(s, name)[:, k]).astype("<f8").tobytes())
    # an altered chunk of zh's sums: named, one line
    import zarr

    arr = zarr.open_array(str(tmp_path / "s" / "sums"), mode="r+")
    arr[0, 1, 0] = arr[0, 1, 0] + 1.0
    with pytest.raises(LnaError, match="array sums, language zh: values differ"):
        open_store(tmp_path / "s")


def test_open_without_sums_reads_counts_only(tmp_path):
    """Identification and reports open stores with sums=False: the counts are verified as
    always, the sums (6x their size on disk) are neither read nor reported as extra arrays."""
    s = make(langs=("en", "zh"))
    save_store(s, tmp_path / "s")
    r = open_store(tmp_path / "s", sums=False)
    assert not r.has_sums
    np.testing.assert_array_equal(r.counts, s.counts)
    np.testing.assert_array_equal(r.tokens, s.tokens)
    chunk = next(p for p in (tmp_path / "s" / "counts").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.unlink()
    with pytest.raises(LnaError, match="array counts.*chunk missing"):
        open_store(tmp_path / "s", sums=False)


def test_missing_sums_chunk_and_unrecorded_sums_arrays_are_damage(tmp_path):
    import shutil

    save_store(make(), tmp_path / "a")
    chunk = next(p for p in (tmp_path / "a" / "active_sums").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.unlink()
    with pytest.raises(LnaError, match="array active_sums.*chunk missing"):
        open_store(tmp_path / "a")
    # sums arrays that the record does not know (copied in from elsewhere)
    save_store(make(), tmp_path / "b")
    save_store(make(sums=False), tmp_path / "c")
    for name in ("sums", "active_sums"):
        shutil.copytree(tmp_path / "b" / name, tmp_path / "c" / name)
    with pytest.raises(LnaError, match="present but not in the store's integrity record"):
        open_store(tmp_path / "c")


def test_validation_of_sums():
    with pytest.raises(LnaError, match="one of sums and active_sums"):
        CountStore(np.zeros((1, 1, 2)), np.ones(1), ["en"], sums=np.zeros((1, 1, 2)))
    with pytest.raises(LnaError, match="shaped like counts"):
        CountStore(np.zeros((1, 1, 2)), np.ones(1), ["en"], sums=np.zeros((1, 1, 3)), active_sums=np.zeros((1, 1, 3)))
    with pytest.raises(LnaError, match="active sums that its counts rule out"):  # never fired, yet a sum
        CountStore(np.zeros((1, 1, 2)), np.ones(1), ["en"], sums=np.zeros((1, 1, 2)),
                   active_sums=np.array([[[0.0, 0.5]]]))
    with pytest.raises(LnaError, match="rule out"):
        CountStore(np.ones((1, 1, 2)), np.ones(1), ["en"], sums=np.zeros((1, 1, 2)),
                   active_sums=np.array([[[0.0, -0.5]]]))


def test_merge_sums_the_sums():
    a = make(langs=("en", "zh"), seed=1, samples={"en": counted(1, 2), "zh": counted(3)})
    b = make(langs=("zh", "ja"), seed=2, samples={"zh": counted(4), "ja": counted(5)})
    m = merge([a, b])
    assert m.languages == ["en", "zh", "ja"]
    np.testing.assert_array_equal(m.sums[:, 0], a.sums[:, 0])
    np.testing.assert_array_equal(m.sums[:, 1], a.sums[:, 1] + b.sums[:, 0])
    np.testing.assert_array_equal(m.active_sums[:, 2], b.active_sums[:, 1])


def test_merge_with_a_store_without_sums_marks_its_languages_unknown(capsys):
    a = make(langs=("en", "zh"), seed=1, samples={"en": counted(1), "zh": counted(2)})
    b = make(langs=("zh", "ja"), seed=2, sums=False, samples={"zh": counted(3), "ja": counted(4)})
    m = merge([a, b], names=["A", "B"])
    err = capsys.readouterr().err
    assert "B has no activation sums" in err and "zh, ja are unknown (NaN)" in err
    np.testing.assert_array_equal(m.sums[:, 0], a.sums[:, 0])  # en: only A counted it, still whole
    assert np.isnan(m.sums[:, 1]).all() and np.isnan(m.active_sums[:, 2]).all()
    np.testing.assert_array_equal(m.counts[:, 1], a.counts[:, 1] + b.counts[:, 0])  # counts as ever
    np.testing.assert_allclose(m.mean_activation("en"), a.sums[:, 0] / a.tokens[0])
    with pytest.raises(LnaError, match="sums of zh are unknown"):
        m.mean_activation("zh")
    # neither has sums: no sums, no note
    plain = merge([make(sums=False, samples={"en": counted(1), "zh": counted(2)}),
                   make(langs=("ja",), sums=False, samples={"ja": counted(3)})])
    assert not plain.has_sums and "sums" not in capsys.readouterr().err


def test_profile_writes_sums_by_default_and_resume_rules(tiny_models, tmp_path, capsys):
    from lna import cli
    from lna.inputs import data, responses
    from lna.runners.hf import HFRunner

    model = tiny_models["llama"]

    def profile(out, *extra, langs="en,zh"):
        with pytest.raises(SystemExit) as done:
            cli.profile_main(["--model", model, "--dataset", "demo", "--langs", langs, "--limit", "2",
                              "--out", str(out), "-q", *extra])
        return done.value.code

    assert profile(tmp_path / "s.zarr") == 0
    store = open_store(tmp_path / "s.zarr")
    samples = responses.samples(data.load(str(tmp_path / "s.responses.jsonl"))[1])
    _, _, sums, active = HFRunner(model).count(samples, ["en", "zh"], sums=True)
    np.testing.assert_allclose(store.sums, sums, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(store.active_sums, active, rtol=1e-12, atol=1e-9)

    assert profile(tmp_path / "n.zarr", "--no-sums") == 0
    assert not open_store(tmp_path / "n.zarr").has_sums
    # continuing it with sums: new languages get them, the counted ones stay unknown
    assert profile(tmp_path / "n.zarr", langs="en,zh,ja") == 0
    assert "its sums of en, zh stay unknown (NaN)" in capsys.readouterr().err
    grown = open_store(tmp_path / "n.zarr")
    assert np.isnan(grown.sums[:, :2]).all() and np.isfinite(grown.sums[:, 2]).all()
    np.testing.assert_array_equal(grown.counts[:, :2], store.counts)
