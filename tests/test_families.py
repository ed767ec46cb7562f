"""Every supported family in the transformers backend, against an unmodified transformers model.

For each family a tiny random model is built offline from its transformers config (with
what sets the family apart switched on: rope scaling, sliding windows shorter than the
sequences, multipliers, soft caps, packed gate_up_proj, GELU-tanh), and lna's counts, NLLs
and greedy generations are compared with tests/naive.py (forward hooks on the gate
pre-activation of an untouched model, eager attention, one sequence at a time). fp32 counts
must be exact up to gates within rounding of zero.
"""
import json

import numpy as np
import pytest
import torch

import naive
from conftest import REPO, lazy_tiny_models, random_samples
from lna.models import families, loading
from lna.core.errors import LnaError
from lna.runners.hf import HFRunner
from lna.models.tiny import ARCHS

LANGS = ["en", "zh", "ja", "sw"]
# tiny arch -> the family (model_type) it proves; every family has at least one
TESTED = {arch: model_type for arch, (model_type, _) in ARCHS.items() if arch not in ("llama", "mistral")}


def arch_param(arch):
    return pytest.param(arch, id=arch)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """arch -> folder of its tiny model (built on first use)."""
    return lazy_tiny_models(tmp_path_factory, "families", seed=7)


@pytest.fixture(scope="module", params=[arch_param(a) for a in TESTED])
def family(request, built):
    """(arch, model folder, runner); small budgets force several batches and split groups."""
    path = built(request.param)
    return request.param, path, HFRunner(path, token_budget=160, max_row_tokens=90)


def test_counts_equal_naive_hooks(family):
    arch, path, runner = family
    samples = random_samples(11, LANGS, questions=6, max_prompt=30, max_response=40)
    counts, tokens = runner.count(samples, LANGS)
    ref, amb = naive.counts(path, samples, LANGS)
    naive.assert_counts_equal(counts, ref, amb)
    assert tokens.tolist() == [sum(len(s.response) for s in samples if s.lang == k) for k in LANGS]
    assert counts.shape == (2, len(LANGS), 96) and 0 < counts.sum() < counts.size * tokens.max()


def test_nll_plain_and_ablated_equal_float64_reference(family):
    """The logits path (soft caps, logit scales) and the masked activation path."""
    arch, path, runner = family
    samples = random_samples(12, LANGS, questions=3, max_prompt=20, max_response=30)
    rng = np.random.default_rng(0)
    masks = rng.random((2, 2, 96)) < 0.3
    mask_ids = [i % 3 - 1 for i in range(len(samples))]  # -1, 0, 1: none and two masks
    got = runner.nll(samples, masks, mask_ids)
    ref64 = naive.nll(path, samples, masks, mask_ids)
    ref32 = naive.nll(path, samples, masks, mask_ids, dtype=torch.float32)
    assert np.abs(got - ref64).max() <= 2 * np.abs(ref32 - ref64).max() + 1e-9


def test_greedy_generation_equals_the_unmodified_model(family):
    arch, path, runner = family
    prompts = [[1, 40, 41, 42, 43], [1, 60, 61]]
    got = runner.generate(prompts, n=1, temperature=0.0, top_p=1.0, max_new_tokens=6, seed=0)
    model = naive.load(path)
    for prompt, (ids,) in zip(prompts, got):
        out = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=6, pad_token_id=2)
        want = out[0, len(prompt):].tolist()
        want = want[:want.index(2)] if 2 in want else want
        assert ids == want


# -- what is supported, and what is refused --------------------------------------------------

def test_every_family_has_a_tiny_model_tested_here():
    assert set(families.BY_TYPE) <= set(TESTED.values())


def test_readme_table_lists_each_family_with_its_backends_and_test():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] in {f.name for f in families.FAMILIES}:
            rows[cells[0]] = cells
    for f in families.FAMILIES:
        assert f.name in rows, f"README families table lacks {f.name}"
        _, types, backends, test = rows[f.name]
        assert all(t in types for t in f.model_types)
        assert backends == ("hf, vllm" if f.vllm else "hf")
        archs = [a for a, t in TESTED.items() if t in f.model_types]
        assert all(a in test for a in archs), (f.name, test)


def _config(tmp_path, **cfg):
    """A model folder with this config and a stand-in weights file (resolve reads the config
    and checks that weights are there; nothing here loads them)."""
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "model.safetensors").touch()
    return str(tmp_path)


def test_mixture_of_experts_is_refused_in_one_line(tmp_path):
    path = _config(tmp_path, model_type="mixtral", architectures=["MixtralForCausalLM"], hidden_act="silu",
                   num_hidden_layers=2, intermediate_size=96, num_local_experts=8)
    with pytest.raises(LnaError, match="mixture-of-experts.*Supported: dense gated-MLP decoders: Llama") as e:
        loading.resolve(path)
    assert "\n" not in str(e.value)
    qwen_moe = _config(tmp_path, model_type="qwen2_moe", num_hidden_layers=2, intermediate_size=96, num_experts=4)
    with pytest.raises(LnaError, match="mixture-of-experts"):
        loading.resolve(qwen_moe)


def test_unsupported_architecture_names_what_is_supported(tmp_path):
    path = _config(tmp_path, model_type="gpt2", architectures=["GPT2LMHeadModel"], n_layer=2)
    with pytest.raises(LnaError, match=r"GPT2LMHeadModel \(model_type 'gpt2'\) is not supported; lna supports "
                                       r"dense gated-MLP decoders: Llama, Mistral, .*Gemma"):
        loading.resolve(path)


def test_an_activation_the_kernel_does_not_compute_is_refused(tmp_path):
    path = _config(tmp_path, model_type="llama", hidden_act="gelu", num_hidden_layers=2, intermediate_size=96)
    with pytest.raises(LnaError, match="activation 'gelu' is not supported"):
        loading.resolve(path)
    # Gemma's legacy "gelu" is transformers' tanh approximation: accepted as Gemma
    gemma = _config(tmp_path, model_type="gemma", hidden_act="gelu", num_hidden_layers=2, intermediate_size=96)
    assert loading.resolve(gemma).family.activation == "gelu_tanh"


def test_an_mlp_that_computes_something_else_is_refused_at_load(built, monkeypatch):
    from transformers.models.qwen3 import modeling_qwen3

    real = modeling_qwen3.Qwen3MLP.forward
    monkeypatch.setattr(modeling_qwen3.Qwen3MLP, "forward", lambda self, x: real(self, x.clamp(-1, 1)))
    with pytest.raises(LnaError, match=r"does not compute down\(silu\(gate\) \* up\)"):
        HFRunner(built("qwen3"))


def test_backend_vllm_refuses_a_family_vllm_does_not_run(built):
    from lna.runners import make_runner

    with pytest.raises(LnaError, match="vLLM 0.32 does not run DiffLlama models; use --backend hf"):
        make_runner(built("diffllama"), backend="vllm", device="cpu")
