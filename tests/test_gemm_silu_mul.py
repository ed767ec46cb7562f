"""The GEMM-epilogue kernel (under TRITON_INTERPRET=1) against the unfused torch path.

Its gate comes from a different summation order than torch's matmul, so a gate within
rounding error of zero may change sign: counts must agree everywhere else, and the
differences are bounded by the number of such near-zero gates. The output obeys the
dtype rule against a float64 computation, for both activations and with interventions
that zero or set neurons. Activation sums are refused (gemm_silu_mul's docstring says why).
"""
import itertools

import pytest
import torch
import torch.nn.functional as F
from kernel_cases import make_values

from lna.kernels.gemm_silu_mul import gemm_silu_mul, gemm_silu_mul_native
from tolerance import FP32_UNIT, act64  # both the kernel and torch's CPU matmul accumulate in fp32

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SHAPES = [(1, 16, 13), (37, 48, 64), (100, 100, 150)]  # (tokens, hidden, neurons)


def make_inputs(n_tokens, hidden, n_neurons, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n_tokens, hidden, generator=gen).to(dtype)
    x[::5] = 0  # whole rows of exactly zero gates (never counted)
    w = (torch.randn(2 * n_neurons, hidden, generator=gen) / hidden**0.5).to(dtype)
    w_gate, w_up = w[:n_neurons], w[n_neurons:]  # halves of a packed gate_up weight
    lang_ids = torch.randint(-1, 3, (n_tokens,), generator=gen, dtype=torch.int32)
    counts = torch.randint(0, 100, (3, n_neurons), generator=gen)
    masks = torch.rand(2, n_neurons, generator=gen) < 0.3
    mask_ids = torch.randint(-1, 2, (n_tokens,), generator=gen)
    return x, w_gate, w_up, lang_ids, counts, masks, mask_ids


def check_against_unfused(shape, dtype, activation="silu", set_values=False):
    n_tokens, hidden, n_neurons = shape
    x, w_gate, w_up, lang_ids, counts, masks, mask_ids = make_inputs(*shape, dtype, seed=sum(shape))
    values = make_values(2, n_neurons, torch.Generator().manual_seed(1)) if set_values else None
    expected_counts = counts.clone()
    plain = gemm_silu_mul_native(x, w_gate, w_up, lang_ids, expected_counts, masks, mask_ids, values=values,
                                 activation=activation)
    out = gemm_silu_mul(x, w_gate, w_up, lang_ids, counts, masks, mask_ids, values=values, activation=activation)

    # Counts: differences only where the float64 gate lies within the summation error of zero.
    x64, wg64 = x.double(), w_gate.double()
    gate64 = x64 @ wg64.T
    near_zero = gate64.abs() <= 2 * hidden * FP32_UNIT * (x64.abs() @ wg64.abs().T)
    counted = F.one_hot(lang_ids.clamp(min=0).long(), 3).T.double() * (lang_ids >= 0).double()  # [3, T]
    allowed = counted @ near_zero.double()  # per (language, neuron): counted near-zero gates
    diff = (counts - expected_counts).abs()
    assert (diff <= allowed).all(), "a count differs where no gate is near zero"
    n_counted = int((lang_ids >= 0).sum()) * n_neurons
    assert diff.sum() <= max(1, 1e-3 * n_counted), f"{int(diff.sum())} sign flips in {n_counted} counted gates"

    # Output: the dtype rule against float64 (the projections included).
    chosen = masks[mask_ids.clamp(min=0)] & (mask_ids >= 0)[:, None]
    new = 0.0 if values is None else values.to(dtype).double()[mask_ids.clamp(min=0)]
    ref = torch.where(chosen, new, act64(gate64, activation)) * (x64 @ w_up.double().T)
    assert torch.isfinite(out).all() and out.dtype == dtype
    err, plain_err = (out.double() - ref).abs().max(), (plain.double() - ref).abs().max()
    assert err <= 2 * plain_err, f"max error {err:.3g} > 2 x unfused torch's {plain_err:.3g}"


@pytest.mark.parametrize("shape,dtype", list(itertools.product(SHAPES, DTYPES)))
def test_gemm_epilogue_matches_unfused(shape, dtype):
    check_against_unfused(shape, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_epilogue_gelu_and_set_values(dtype):
    check_against_unfused((37, 48, 64), dtype, activation="gelu_tanh", set_values=True)


def test_gemm_epilogue_refuses_sums():
    x, w_gate, w_up, lang_ids, _, _, _ = make_inputs(5, 16, 13, torch.float32, seed=2)
    with pytest.raises(ValueError, match="call lna.kernels.silu_mul") as info:
        gemm_silu_mul(x, w_gate, w_up, lang_ids, sums=torch.zeros(3, 13, dtype=torch.float64))
    assert "\n" not in str(info.value)


def test_gemm_epilogue_plain_and_counting_alone():
    x, w_gate, w_up, lang_ids, counts, _, _ = make_inputs(37, 48, 64, torch.float32, seed=1)
    plain = gemm_silu_mul_native(x, w_gate, w_up)
    assert (gemm_silu_mul(x, w_gate, w_up) - plain).abs().max() <= 1e-5
    expected = counts.clone()
    gemm_silu_mul_native(x, w_gate, w_up, lang_ids, expected)
    gemm_silu_mul(x, w_gate, w_up, lang_ids, counts)
    assert (counts - expected).abs().sum() <= 2  # sign flips only, at most a couple in fp32


def test_gemm_epilogue_rejects_mismatched_weights():
    with pytest.raises(ValueError, match=r"weights \[I, H\]"):
        gemm_silu_mul(torch.ones(3, 4), torch.ones(5, 4), torch.ones(5, 3))
