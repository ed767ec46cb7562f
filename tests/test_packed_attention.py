"""The packed (varlen) forward against the dense 4D-mask forward and a float64 reference.

The same runner computes each batch both ways (lna.runners.packed_attention: packed on the
real tokens as [1, N], or padded [B, S] with the dense mask, the reference). Every gate
pre-activation is compared with a float64 computation by an unmodified model (eager
attention, one prompt+response at a time): the packed path's error must be at most twice
the dense path's in the same dtype (tests/tolerance.py's rule), the counts must be equal
except where the two paths' gates differ in sign (and each such gate is within that
rounding of zero), and NLLs follow the same rule. Families whose attention the packed path
cannot compute (soft caps) fall back to the dense path, decided once, and say why.
"""
import numpy as np
import pytest
import torch

import naive
from conftest import lazy_tiny_models, random_samples
from lna.inputs.samples import Sample
from lna.runners import packed_attention, packing
from lna.runners.hf import HFRunner

LANGS = ["en", "zh", "ja"]
# llama; sliding windows (all layers; mixed full/sliding); q/k/v biases; GELU-tanh;
# soft caps (dense fallback); Gemma 3 mixed windows and pre-attention scalar; packed gate_up
ARCHS = ["llama", "mistral-swa", "ministral", "qwen2", "gemma", "gemma2", "gemma3", "phi3"]
FALLBACK = {"gemma2": "soft-capping"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return lazy_tiny_models(tmp_path_factory, "packed", seed=3)


def gate_hooks(runner, store):
    """Record each layer's gate pre-activation (real tokens, batch after batch) in `store`."""
    hooks = []
    for i, layer in enumerate(runner.decoder.layers):
        mlp = layer.mlp
        if hasattr(mlp, "gate_proj"):
            hooks.append(mlp.gate_proj.register_forward_hook(
                lambda m, a, o, i=i: store.setdefault(i, []).append(o.reshape(-1, o.shape[-1]).float())))
        else:
            hooks.append(mlp.gate_up_proj.register_forward_hook(
                lambda m, a, o, i=i: store.setdefault(i, []).append(
                    o.reshape(-1, o.shape[-1])[:, : o.shape[-1] // 2].float())))
    return hooks


def run(runner, samples, packed: bool):
    """(counts, gates {layer: [T, I]}, nll) with the runner forced packed or dense."""
    runner.run_batch.packed = packed
    gates = {}
    hooks = gate_hooks(runner, gates)
    try:
        counts, _ = runner.count(samples, LANGS)
    finally:
        for h in hooks:
            h.remove()
    nll = runner.nll(samples, None, [-1] * len(samples))
    return counts, {i: torch.cat(g) for i, g in gates.items()}, nll


@torch.no_grad()
def reference_gates(path, runner, samples):
    """float64 gates in the runner's order of real tokens (batch, row, then prompt and each
    response), from one prompt+response sequence at a time through an unmodified model."""
    model = naive.load(path, torch.float64)
    acts, out = {}, {}
    hooks = [naive.gate_hook(layer.mlp, acts, i) for i, layer in enumerate(naive.layers(model))]
    try:
        for rows in runner._batches(samples):
            for row in rows:
                P = len(row.prompt)
                for j, resp in enumerate(row.responses):
                    model(torch.tensor([list(row.prompt) + list(resp)]))
                    for i, g in acts.items():
                        if j == 0:
                            out.setdefault(i, []).append(g[:P])
                        out[i].append(g[P:])
    finally:
        for h in hooks:
            h.remove()
    return {i: torch.cat(g) for i, g in out.items()}


def token_langs(runner, samples):
    """Language index per real token in the runner's order (-1: prompt)."""
    index = {lang: k for k, lang in enumerate(LANGS)}
    return np.concatenate([packing.build_batch(rows, samples, index).lang_ids for rows in runner._batches(samples)])


def assert_packed_equals_dense(path, runner, samples):
    dense = run(runner, samples, packed=False)
    packed = run(runner, samples, packed=True)
    ref = reference_gates(path, runner, samples)
    langs = token_langs(runner, samples)
    for layer, g64 in ref.items():
        gd, gp = dense[1][layer].double(), packed[1][layer].double()
        assert gd.shape == gp.shape == g64.shape
        err_d, err_p = (gd - g64).abs(), (gp - g64).abs()
        assert err_p.max() <= 2 * err_d.max() + 1e-12, (layer, float(err_p.max()), float(err_d.max()))
        # counts: equal except where the two paths' gates differ in sign; such a gate is
        # within the paths' rounding of zero
        flips = (gd > 0) != (gp > 0)
        assert (g64.abs()[flips] <= torch.maximum(err_d, err_p)[flips]).all()
        for k in range(len(LANGS)):
            rows = torch.from_numpy(langs == k)
            n_flips = flips[rows].sum(0).numpy()
            diff = np.abs(packed[0][layer, k] - dense[0][layer, k])
            assert (diff <= n_flips).all(), (layer, k)
            assert flips[rows].sum() <= 1e-2 * flips[rows].numel()  # rare, or the test proves little
    some = [i for i, x in enumerate(samples) if x.prompt]  # naive.nll predicts from the prompt's last token
    ref64 = naive.nll(path, [samples[i] for i in some])
    assert np.abs(packed[2][some] - ref64).max() <= 2 * np.abs(dense[2][some] - ref64).max() + 1e-9
    assert np.abs(packed[2] - dense[2]).max() <= 1e-3 * np.abs(dense[2]).max()  # the rest, loosely
    return dense, packed


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("arch", ARCHS)
def test_packed_equals_dense_within_the_dtype_rule(built, arch, dtype):
    path = built(arch)
    runner = HFRunner(path, dtype=dtype, token_budget=200, max_row_tokens=100)
    samples = random_samples(21, LANGS, questions=5, max_prompt=30, max_response=30)
    if arch in FALLBACK:  # decided at setup from the config; the probe would find it too
        assert runner.run_batch.packed is False and FALLBACK[arch] in runner.run_batch.why_dense
        runner.run_batch.packed = None
        runner.count(samples[:2], LANGS)
        assert runner.run_batch.packed is False and "softcap" in runner.run_batch.why_dense
        return
    runner.count(samples[:2], LANGS)  # decided as in a run: the probe at the first batch
    assert runner.run_batch.packed is True, runner.run_batch.why_dense
    dense, packed = assert_packed_equals_dense(path, runner, samples)
    if dtype == "float32":  # and the counts against naive hooks (near-zero flips only)
        ref, amb = naive.counts(path, samples, LANGS)
        naive.assert_counts_equal(packed[0], ref, amb)


def odd_samples():
    """One-token and empty prompts, one-token responses, many responses in one row, rows of
    very different lengths (a 60-token prompt beside a 1-token one), windows exceeded."""
    rng = np.random.default_rng(5)
    toks = (lambda n: tuple(rng.integers(3, 259, n).tolist()))
    out = [Sample("a/0", "en", (1,), toks(1), group="a"), Sample("a/1", "en", (1,), toks(7), group="a")]
    out += [Sample("b/0", "zh", (), toks(5), group="b"), Sample("b/1", "zh", (), toks(1), group="b")]
    long = (1,) + toks(59)
    out += [Sample(f"c/{j}", "ja", long, toks(int(rng.integers(1, 4))), group="c") for j in range(12)]
    out += [Sample("d/0", "en", (1, 5), toks(40), group="d")]
    return out


@pytest.mark.parametrize("arch", ["llama", "mistral-swa", "ministral"])
def test_odd_shapes(built, arch):
    path = built(arch)
    runner = HFRunner(path, token_budget=512, max_row_tokens=256)
    assert_packed_equals_dense(path, runner, odd_samples())
    assert runner.run_batch.packed is True


def test_no_padding_and_no_token_by_token_mask(built, monkeypatch):
    """The packed forward embeds exactly the real tokens as one [1, N] sequence, builds no
    dense mask, and leaves the model's attention implementation as it was (generate's)."""
    path = built("mistral-swa")
    runner = HFRunner(path, token_budget=200, max_row_tokens=100)
    samples = random_samples(4, LANGS, questions=4)
    runner.count(samples[:1], LANGS)  # the probe
    shapes = []
    hook = runner.decoder.embed_tokens.register_forward_hook(lambda m, a, o: shapes.append(tuple(a[0].shape)))

    def no_mask(*a, **k):
        raise AssertionError("a dense mask was built")
    monkeypatch.setattr(packing, "attention_mask", no_mask)
    try:
        runner.count(samples, LANGS)
    finally:
        hook.remove()
    real = sum(len(b.real) for b in (packing.build_batch(r, samples, {lang: 0 for lang in LANGS})
                                     for r in runner._batches(samples)))
    assert all(s[0] == 1 for s in shapes) and sum(s[1] for s in shapes) == real
    assert runner.decoder.config._attn_implementation == "sdpa"


def _wrap_attention(runner, layer, extra=None, bypass=False):
    """Make one layer's attention pass an extra argument to the attention function, or skip
    transformers' attention interface altogether (computing plain causal attention)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    attn = runner.decoder.layers[layer].self_attn
    original = ALL_ATTENTION_FUNCTIONS.get_interface

    def forward(hidden_states, position_embeddings=None, attention_mask=None, **kwargs):
        config = attn.config
        impl = config._attn_implementation
        if bypass:
            config._attn_implementation = "sdpa"
        try:
            if extra:
                ALL_ATTENTION_FUNCTIONS.get_interface = (
                    lambda name, default: (lambda *a, **k: original(name, default)(*a, **k, **extra)))
            return type(attn).forward(attn, hidden_states, position_embeddings, attention_mask, **kwargs)
        finally:
            ALL_ATTENTION_FUNCTIONS.get_interface = original
            config._attn_implementation = impl
    attn.forward = forward


@pytest.mark.parametrize("case, why", [
    ({"extra": {"s_aux": torch.zeros(2)}}, "layer 1: attention arguments s_aux"),
    ({"extra": {"alibi_slopes": torch.ones(2)}}, "layer 1: attention arguments alibi_slopes"),
    ({"extra": {"sliding_window": 8}}, "layer 1: sliding window 8 where lna's mask uses None"),
    ({"extra": {"is_causal": False}}, "layer 1: non-causal attention, or attention weights asked for"),
    ({"bypass": True}, "layer 1's attention does not go through transformers' attention interface"),
])
def test_what_the_packed_path_cannot_honour_falls_back_to_dense(built, case, why):
    """Attention sinks, position biases, another window, a layer outside the interface: found by the
    probe at the first batch, which counts nothing; the run goes dense and stays correct."""
    path = built("llama")
    runner = HFRunner(path, token_budget=200, max_row_tokens=100)
    _wrap_attention(runner, 1, **case)
    samples = random_samples(8, LANGS, questions=4)
    counts, tokens = runner.count(samples, LANGS)
    assert runner.run_batch.packed is False and runner.run_batch.why_dense == why
    assert tokens.sum() == sum(len(s.response) for s in samples)
    if "bypass" not in case:  # the extra arguments are ignored by the model's SDPA: counts as before
        ref, amb = naive.counts(path, samples, LANGS)
        naive.assert_counts_equal(counts, ref, amb)


def test_a_model_that_fails_the_packed_layout_runs_dense(built):
    path = built("llama")
    runner = HFRunner(path, token_budget=200, max_row_tokens=100)
    attn = runner.decoder.layers[0].self_attn

    def forward(hidden_states, position_embeddings=None, attention_mask=None, **k):
        if attention_mask is None:  # the packed layout: no mask
            raise RuntimeError("this model wants a mask")
        return type(attn).forward(attn, hidden_states, position_embeddings, attention_mask, **k)
    attn.forward = forward
    samples = random_samples(9, LANGS, questions=3)
    counts, _ = runner.count(samples, LANGS)
    assert runner.run_batch.packed is False
    assert runner.run_batch.why_dense == "the packed probe forward failed: RuntimeError: this model wants a mask"
    ref, amb = naive.counts(path, samples, LANGS)
    naive.assert_counts_equal(counts, ref, amb)


def test_fallback_by_config_is_decided_at_setup(built):
    runner = HFRunner(built("gemma2"))
    assert runner.run_batch.packed is False
    assert runner.run_batch.why_dense == "attention logit soft-capping"
    assert set(packed_attention.DENSE_CONFIG) == {"attn_logit_softcapping", "use_bidirectional_attention", "alibi"}
