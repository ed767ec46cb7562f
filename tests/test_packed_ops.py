"""The packed forward's fused RMSNorm and copy-free rotary against transformers' own code and
float64: at most twice transformers' error in the same dtype; swapped in only where a model's
code is Llama's, and only during the packed forward."""
import pytest
import torch
from transformers.models.gemma import modeling_gemma
from transformers.models.llama import modeling_llama

from lna.models.tiny import build_tiny
from lna.runners import packed_ops
from lna.runners.hf import HFRunner


def err(x, ref):
    return float((x.double() - ref).abs().max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_within_twice_transformers_error(dtype):
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 4, 37, 64, generator=gen) * 3, torch.randn(1, 2, 37, 64, generator=gen) * 3
    theta = torch.rand(1, 37, 32, generator=gen) * 100
    cos, sin = torch.cat([theta.cos()] * 2, -1), torch.cat([theta.sin()] * 2, -1)
    q, k, cos, sin = (t.to(dtype) for t in (q, k, cos, sin))
    want = modeling_llama.apply_rotary_pos_emb(q, k, cos, sin)
    got = packed_ops.rotary(q, k, cos, sin)
    ref = modeling_llama.apply_rotary_pos_emb(*(t.double() for t in (q, k, cos, sin)))
    for g, w, r in zip(got, want, ref):
        assert g.dtype == dtype and g.shape == w.shape
        assert err(g, r) <= 2 * err(w, r) + 1e-12


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.no_grad()
def test_rms_norm_within_twice_transformers_error(dtype):
    gen = torch.Generator().manual_seed(1)
    norm = modeling_llama.LlamaRMSNorm(96, eps=1e-6)
    norm.weight.data = torch.randn(96, generator=gen) * 2
    norm = norm.to(dtype)
    x = (torch.randn(3, 41, 96, generator=gen) * 5).to(dtype)
    want, got = norm(x), packed_ops.rms_norm(norm, x)
    x64, w64 = x.double(), norm.weight.double()
    ref = w64 * x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-6)
    assert got.dtype == dtype and err(got, ref) <= 2 * err(want, ref) + 1e-12


def test_swapped_only_for_llamas_code_and_only_inside(tmp_path):
    llama = HFRunner(str(build_tiny(tmp_path / "llama", "llama")))
    swaps = llama.run_batch.swaps
    assert swaps.modules == [modeling_llama] and len(swaps.norms) == 2 * llama.layers + 1
    with swaps:
        assert modeling_llama.apply_rotary_pos_emb is packed_ops.rotary
    assert modeling_llama.apply_rotary_pos_emb is not packed_ops.rotary
    assert all("forward" not in vars(m) for m in swaps.norms)
    gemma = HFRunner(str(build_tiny(tmp_path / "gemma", "gemma"))).run_batch.swaps
    assert gemma.modules == [modeling_gemma] and gemma.norms == []  # Gemma's norm scales by 1 + weight
    cohere = HFRunner(str(build_tiny(tmp_path / "cohere", "cohere"))).run_batch.swaps
    assert cohere.modules == [] and cohere.norms == []  # interleaved rotary, LayerNorm
