"""The activations element by element: GELU-tanh (Gemma's gelu_pytorch_tanh) and SiLU of the
Triton kernel (under TRITON_INTERPRET=1) against torch and float64, over every finite
16-bit input and a dense fp32 sweep; the reference against transformers' own activation.
The batched grids of test_silu_mul.py and test_silu_mul_steer.py run both activations.

Rules, per element (act64 = the true activation of the dtype's input, kernel_cases.act64):
- 16-bit: the kernel's activation equals torch's, or its error is at most twice torch's
  (they differ only where the true value lies next to a rounding midpoint, or where torch's
  1 + tanh(y) cancels for negative x and the kernel's x sigmoid(2y) does not);
- fp32: the error is at most twice the larger of torch's error and beta |act64|, the worst
  case of any correct fp32 evaluation (tolerance: final rounding, and exp's
  amplification |z| of the roundings of its argument).
"""
import pytest
import torch
from kernel_cases import ACTIVATIONS, DTYPES

from lna.kernels import activation_native, silu_mul
from tolerance import FP32_UNIT, act64, exp_argument
from lna.kernels.silu_mul_triton import LaunchConfig, silu_mul_triton

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning",
                                        "ignore:invalid value encountered:RuntimeWarning")
WIDE = LaunchConfig(16, 4096, 16)  # one program per 65,536 elements: the interpreter's cost is per program and op


def kernel_act(x, activation):
    """The kernel's activation alone (up = 1 makes the product exact), one row of 4096 per 16 tokens."""
    flat = x.reshape(-1, 4096)
    return silu_mul_triton(flat, torch.ones_like(flat), activation=activation, config=WIDE).reshape(x.shape)


def same_nan(a, b):
    return torch.equal(a.isnan(), b.isnan())


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_every_16_bit_input(dtype, activation):
    x = torch.arange(-2**15, 2**15, dtype=torch.int32).to(torch.int16).view(dtype)  # every bit pattern
    k, t, exact = kernel_act(x, activation), activation_native(x, activation), act64(x, activation)
    assert same_nan(k, t)
    ok = ~k.isnan()
    k, t, exact = k[ok].double(), t[ok].double(), exact[ok]
    for infinity in (float("inf"), -float("inf")):
        assert torch.equal(k == infinity, exact == infinity)
    finite = exact.isfinite()
    k, t, exact = k[finite], t[finite], exact[finite]
    err, torch_err = (k - exact).abs(), (t - exact).abs()
    bad = (k != t) & (err > 2 * torch_err)
    assert not bad.any(), f"{int(bad.sum())} inputs worse than twice torch, e.g. {exact[bad][:3].tolist()}"
    assert (k != t).float().mean() < 0.01  # rare midpoint cases, and torch's cancellation for negative x


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_dense_fp32_sweep(activation):
    gen = torch.Generator().manual_seed(20)
    parts = [torch.linspace(-30, 30, 2**15), torch.logspace(-40, 38, 2**13), -torch.logspace(-40, 38, 2**13),
             torch.randn(2**14 - 6, generator=gen) * 3,
             torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), torch.finfo(torch.float32).max])]
    x = torch.cat(parts)
    k, t, exact = kernel_act(x, activation), activation_native(x, activation), act64(x, activation)
    assert same_nan(k, t)
    ok = ~k.isnan() & exact.isfinite()
    assert torch.equal(k[~exact.isfinite() & ~k.isnan()].double(), exact[~exact.isfinite() & ~k.isnan()])
    k, t, exact, z = k[ok].double(), t[ok].double(), exact[ok], exp_argument(x, activation)[ok].abs()
    beta = FP32_UNIT * (3 + 2 * z)
    bound = 2 * torch.maximum((t - exact).abs(), beta * exact.abs())
    bad = (k - exact).abs() > bound
    assert not bad.any(), f"{int(bad.sum())} inputs beyond the bound, e.g. x = {x[ok][bad][:3].tolist()}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_is_transformers_gelu_pytorch_tanh(dtype):
    """activation_native("gelu_tanh") is what Gemma's MLP computes, bit for bit."""
    activations = pytest.importorskip("transformers.activations")
    x = (torch.randn(4096, generator=torch.Generator().manual_seed(21)) * 4).to(dtype)
    assert torch.equal(activation_native(x, "gelu_tanh"), activations.ACT2FN["gelu_pytorch_tanh"](x))
    assert torch.equal(activation_native(x, "silu"), activations.ACT2FN["silu"](x))


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_counting_is_the_same_rule(backend):
    """GELU(x) > 0 exactly when x > 0: counts do not depend on the activation."""
    gen = torch.Generator().manual_seed(22)
    gate, up = torch.randn(2, 50, 64, generator=gen).bfloat16().unbind(0)
    gate[::7] = 0
    lang_ids = torch.randint(-1, 3, (50,), generator=gen)
    counts = [torch.zeros(3, 64, dtype=torch.int64) for _ in ACTIVATIONS]
    for table, activation in zip(counts, ACTIVATIONS):
        silu_mul(gate, up, lang_ids=lang_ids, counts=table, activation=activation, backend=backend)
    assert torch.equal(counts[0], counts[1])
    expected = torch.stack([(gate[lang_ids == lang] > 0).sum(0) for lang in range(3)])
    assert torch.equal(counts[1], expected)
