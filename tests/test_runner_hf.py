"""The transformers runner against an unmodified model with hooks (tests/naive.py)."""
import numpy as np
import pytest
import torch

import naive
from conftest import random_samples
from lna.inputs.samples import Sample
from lna.runners.counting_mlp import CountingMLP, CountingState
from lna.runners.hf import HFRunner

LANGS = ["en", "zh", "ja", "sw"]


@pytest.fixture(scope="module", params=["llama", "mistral"])
def arch(request):
    return request.param


@pytest.fixture(scope="module")
def runner(tiny_models, arch):
    # Small budgets force several batches, split groups (prompt repeated) and padding.
    return HFRunner(tiny_models[arch], token_budget=160, max_row_tokens=90)


def test_counts_equal_naive_hooks(runner, tiny_models, arch):
    samples = random_samples(1, LANGS)
    counts, tokens = runner.count(samples, LANGS)
    ref, amb = naive.counts(tiny_models[arch], samples, LANGS)
    naive.assert_counts_equal(counts, ref, amb)
    expected = [sum(len(s.response) for s in samples if s.lang == lang) for lang in LANGS]
    assert tokens.tolist() == expected
    assert counts.dtype == np.int64 and (counts <= tokens[None, :, None]).all()


def test_language_order_and_subsets_are_independent(runner):
    """Counting one language alone gives its slice of the joint run (no cross-talk)."""
    samples = random_samples(2, LANGS)
    joint, _ = runner.count(samples, LANGS)
    for k, lang in enumerate(LANGS):
        alone, tokens = runner.count([s for s in samples if s.lang == lang], [lang])
        assert np.array_equal(alone[:, 0], joint[:, k]) or np.abs(alone[:, 0] - joint[:, k]).max() <= 1
        assert tokens[0] == sum(len(s.response) for s in samples if s.lang == lang)


def test_two_pass_semantics_equal_one_pass(runner, tiny_models, arch):
    """The study's (prompt+response) - (prompt alone) equals counting response positions."""
    samples = random_samples(3, LANGS)
    one_pass, _ = runner.count(samples, LANGS)
    full = [Sample(s.key, s.lang, (), tuple(s.prompt) + tuple(s.response)) for s in samples]
    prefix = [Sample(s.key, s.lang, (), tuple(s.prompt)) for s in samples]
    two_pass = runner.count(full, LANGS)[0] - runner.count(prefix, LANGS)[0]
    _, amb_full = naive.counts(tiny_models[arch], samples, LANGS, count_prompt=True)
    naive.assert_counts_equal(two_pass, one_pass, amb_full)


def test_padding_and_prompts_never_counted(runner):
    """Empty-response samples add nothing; prompts alone add nothing."""
    s = random_samples(4, LANGS, questions=3)
    counts, tokens = runner.count([Sample(x.key, x.lang, x.prompt, x.response[:1]) for x in s], LANGS)
    assert tokens.sum() == len(s)
    assert counts.max() <= tokens.max()


def test_nll_equals_float64_reference(runner, tiny_models, arch):
    samples = random_samples(5, LANGS, questions=5)
    got = runner.nll(samples, None, [-1] * len(samples))
    ref64 = naive.nll(tiny_models[arch], samples)
    ref32 = naive.nll(tiny_models[arch], samples, dtype=torch.float32)
    # the dtype rule: at most twice plain transformers' own fp32 error (+ float64 eps)
    assert np.abs(got - ref64).max() <= 2 * np.abs(ref32 - ref64).max() + 1e-9


def test_generate_returns_n_responses_without_eos(runner):
    prompts = [[1, 40, 41, 42], [1, 50]]
    out = runner.generate(prompts, n=3, temperature=0.9, top_p=0.95, max_new_tokens=7, seed=0)
    assert [len(r) for r in out] == [3, 3]
    eos = runner.tokenizer.eos_token_id
    assert all(len(x) <= 7 and eos not in x for r in out for x in r)
    again = runner.generate(prompts, n=3, temperature=0.9, top_p=0.95, max_new_tokens=7, seed=0)
    assert again == out  # seeded: a resumed run samples the same


@pytest.mark.parametrize("model", ["llama", "phi3"])  # separate gate/up, and one packed gate_up_proj
def test_reused_mlp_buffers_change_nothing(tmp_path, model, monkeypatch):
    """On CPU the counting MLPs write gate, up (or gate_up) and act(gate) * up into buffers reused
    layer after layer: counts, sums and the NLL under interventions equal, bit for bit, those of
    the projections called as modules with fresh outputs."""
    from lna.models.tiny import build_tiny

    runner = HFRunner(str(build_tiny(tmp_path / model, model)), token_budget=160, max_row_tokens=90)
    samples = random_samples(6, LANGS)
    rng = np.random.default_rng(0)
    masks = rng.random((2, runner.layers, runner.neurons)) < 0.3
    values = rng.normal(size=masks.shape).astype(np.float32)
    offsets = rng.normal(size=masks.shape).astype(np.float32)
    ids = [k % 3 - 1 for k in range(len(samples))]
    taken = []
    real_buffer = CountingState.buffer
    monkeypatch.setattr(CountingState, "buffer", lambda self, *a: taken.append(a[0]) or real_buffer(self, *a))

    def run():
        return (*runner.count(samples, LANGS, sums=True), runner.nll(samples, masks, ids, values, offsets))

    reused = run()
    assert {"act", "gate_up"} <= set(taken) if model == "phi3" else {"act", "gate", "up"} <= set(taken)
    monkeypatch.setattr(CountingMLP, "_reuse", lambda self, flat: False)
    taken.clear()
    fresh = run()
    assert not taken
    for a, b in zip(reused, fresh):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("bias", [False, True])
def test_reused_buffers_compute_what_the_modules_do(bias):
    """torch.mm / addmm into the workspace equal nn.Linear's own call (F.linear), with and
    without a bias; a hook on a projection keeps the module call (the hook sees it)."""
    from lna.models import families

    torch.manual_seed(0)
    mlp = torch.nn.Module()
    mlp.gate_proj, mlp.up_proj = torch.nn.Linear(12, 20, bias=bias), torch.nn.Linear(12, 20, bias=bias)
    mlp.down_proj = torch.nn.Linear(20, 12, bias=bias)
    family = families.Family("llama-like", ("llama",))
    module = CountingMLP(mlp, 0, CountingState(), family, families.kernel_kwargs(family))
    x = torch.randn(3, 7, 12)
    ref = mlp.down_proj(torch.nn.functional.silu(mlp.gate_proj(x)) * mlp.up_proj(x))
    with torch.inference_mode():
        assert module._reuse(x)
        assert torch.equal(module(x), ref) and set(module.state.workspace) == {"gate", "up", "act"}
        seen = []
        mlp.gate_proj.register_forward_hook(lambda m, i, o: seen.append(o.shape))
        assert not module._reuse(x)
        assert torch.equal(module(x), ref) and seen == [(21, 20)]
