"""Interventions in the transformers runner (issue 11, part 2): per token, a neuron passes,
is zeroed or is set to a value, in nll and in generate, several interventions in one batch;
against an unmodified transformers model with hooks on its activation (tests/naive.py)."""
import numpy as np
import pytest
import torch

import naive
from conftest import random_samples
from lna.core.errors import LnaError
from lna.runners.hf import HFRunner

LANGS = ["en", "zh", "ja", "sw"]
PROMPTS = [[1, 40, 41, 42, 43], [1, 50], [1, 60, 61, 200, 201, 202, 7], [1, 9, 9]]


@pytest.fixture(scope="module")
def runner(tiny_models):
    return HFRunner(tiny_models["llama"], token_budget=160, max_row_tokens=90)


@pytest.fixture(scope="module")
def reference(tiny_models):
    """The unmodified model with the runner's attention implementation (bit-comparable)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_models["llama"], dtype=torch.float32,
                                                attn_implementation="sdpa").eval()


def interventions(runner, seed=0, n=2):
    """n random interventions: ~20% of neurons set to values of either sign, ~10% zeroed."""
    rng = np.random.default_rng(seed)
    shape = (n, runner.layers, runner.neurons)
    masks = rng.random(shape) < 0.3
    values = np.where(rng.random(shape) < 2 / 3, rng.normal(0, 2, shape), 0.0).astype(np.float32)
    return masks, values


def test_nll_with_set_values_equals_float64_reference(runner, tiny_models):
    samples = random_samples(5, LANGS, questions=5)
    masks, values = interventions(runner)
    mask_ids = [[-1, 0, 1][i % 3] for i in range(len(samples))]
    got = runner.nll(samples, masks, mask_ids, values)
    path = tiny_models["llama"]
    ref64 = naive.nll(path, samples, masks, mask_ids, values=values)
    ref32 = naive.nll(path, samples, masks, mask_ids, dtype=torch.float32, values=values)
    # the dtype rule: at most twice plain transformers' own fp32 error (+ float64 eps)
    assert np.abs(got - ref64).max() <= 2 * np.abs(ref32 - ref64).max() + 1e-9
    zeroed = runner.nll(samples, masks, mask_ids)  # values matter: setting is not zeroing
    steered = np.array(mask_ids) >= 0
    assert (np.abs(zeroed - got)[steered] > 1e-3).all() and np.array_equal(zeroed[~steered], got[~steered])


def test_empty_intervention_reproduces_plain_greedy_generation_exactly(runner, reference):
    plain = runner.generate(PROMPTS, n=1, temperature=0, top_p=1, max_new_tokens=20, seed=0)
    empty = np.zeros((1, runner.layers, runner.neurons), bool)
    steered = runner.generate(PROMPTS, n=1, temperature=0, top_p=1, max_new_tokens=20, seed=0, masks=empty,
                              values=np.zeros(empty.shape, np.float32), mask_ids=[0] * len(PROMPTS))
    assert steered == plain
    assert [g for (g,) in plain] == naive.greedy(None, PROMPTS, 20, model=reference)
    assert any(len(g) > 5 for (g,) in plain)  # something was generated


def test_generate_with_interventions_equals_hooked_reference(runner, reference):
    masks, values = interventions(runner, seed=1)
    for m in range(2):
        got = runner.generate(PROMPTS, n=1, temperature=0, top_p=1, max_new_tokens=16, seed=0, masks=masks,
                              values=values, mask_ids=[m] * len(PROMPTS))
        ref = naive.greedy(None, PROMPTS, 16, masks[m], values[m], model=reference)
        assert [g for (g,) in got] == ref
    # zeroing (no values) too
    got = runner.generate(PROMPTS, n=1, temperature=0, top_p=1, max_new_tokens=16, seed=0, masks=masks,
                          mask_ids=[0] * len(PROMPTS))
    assert [g for (g,) in got] == naive.greedy(None, PROMPTS, 16, masks[0], model=reference)


def test_several_interventions_in_one_batch(runner):
    """Per-prompt ids: each row of a mixed batch equals that row of a batch where every
    prompt has its intervention (same batch, same padding: bit for bit)."""
    masks, values = interventions(runner, seed=2)
    ids = [0, 1, -1, 1]
    kw = dict(n=1, temperature=0, top_p=1, max_new_tokens=12, seed=0, masks=masks, values=values)
    mixed = runner.generate(PROMPTS, mask_ids=ids, **kw)
    alone = {m: runner.generate(PROMPTS, mask_ids=[m] * len(PROMPTS), **kw) for m in (0, 1, -1)}
    assert mixed == [alone[m][i] for i, m in enumerate(ids)]
    assert alone[0] != alone[1] != alone[-1]  # the interventions do change the text
    # sampling with n > 1: each prompt's n rows carry its id
    sampled = runner.generate(PROMPTS[:2], mask_ids=[0, -1], **{**kw, "n": 3, "temperature": 0.8})
    assert [len(r) for r in sampled] == [3, 3]


def test_bad_interventions_are_one_clear_error(runner):
    masks, values = interventions(runner)
    with pytest.raises(LnaError, match="masks must be bool"):
        runner.generate(PROMPTS, n=1, temperature=0, top_p=1, max_new_tokens=2, seed=0,
                        masks=masks[:, :1], mask_ids=[0] * 4)
    with pytest.raises(LnaError, match="values must be shaped like masks"):
        runner.nll(random_samples(1, LANGS, questions=1), masks, [0], values[:1])
    with pytest.raises(LnaError, match="mask_ids must"):
        runner.generate(PROMPTS, n=1, temperature=0, top_p=1, max_new_tokens=2, seed=0, masks=masks,
                        mask_ids=[0, 5, 0, 0])
    # still usable, and nothing left over from the refused calls
    assert runner.generate(PROMPTS[:1], n=1, temperature=0, top_p=1, max_new_tokens=4, seed=0) == \
        runner.generate(PROMPTS[:1], n=1, temperature=0, top_p=1, max_new_tokens=4, seed=0)
