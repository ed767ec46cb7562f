"""Inputs and error rules shared by the kernel tests (test_silu_mul*.py, test_gemm_silu_mul.py).

Output rule (HELPERS.md): a kernel's error against a float64 computation is at most twice
that of plain torch in the same dtype; checked on the largest error and on every element
relative to its size (where the activation and the result are normal numbers of the
dtype; the subnormal rest is bound by the first check). Torch's error is the larger of its
error on the test's data and its largest relative error on a fixed sample of 2**16
elements (torch_error): a tiny test (T = 7, I = 1) holds too few elements to show torch's
usual worst case, and would pass or fail by the luck of its roundings.

Sums rule: the float64 reference is the exact sum of the true activation (computed in
float64 from the dtype's gate) over the counted tokens, plus the table's initial value.
Plain torch computes it as a hook would: the activation in the dtype, summed per language
in fp32 token after token (index_add_), then added to the table. A kernel's table must
(1) have a largest error at most twice plain torch's largest error (at least what torch's
last roundings alone can make: the largest sum's to fp32, the table's), and (2) at every
entry, an error at most twice the worst case of plain torch's computation of that entry:
    sum over its n tokens of max(|act_torch - act_true|, beta |act_true|)
    + gamma_n * sum |act_torch|  +  k u_table |reference|
where beta = u_dtype + 2 u (1 + |z|) is the worst case of any correct evaluation of the
activation (its final rounding, u_dtype = eps / 2 of the dtype, and fp32 roundings of the
argument z of exp, -x or -2y, which exp amplifies by |z|), gamma_n = n u / (1 - n u) the
bound of fp32 recursive summation, u = 2**-24, and k u_table the roundings of the k fp32
partials the kernel adds into the table (float64: u_table = 2**-53; float32: 2**-24;
plain torch rounds once). (1) is sharp on large tables (a biased activation error grows
like n, torch's like sqrt(n)); (2) binds every entry without depending on the luck of
torch's roundings at a single token.
"""
import functools

import torch
import torch.nn.functional as F

from lna.kernels import activation_native, silu_mul_native

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ACTIVATIONS = ("silu", "gelu_tanh")
FP32_UNIT = 2.0**-24
SQRT_2_OVER_PI = 0.7978845608028654


def make_inputs(n_tokens, n_neurons, dtype, *, strided, langs, masks, n_langs=3, n_masks=4, seed=0):
    """Fresh random inputs; gate holds exact zeros of both signs (0 does not fire).

    langs: "all" (every token counted), "none", or "mixed" (several languages and -1);
    masks: None, "empty", "full", "random" (30% of neurons per mask row), or "set" (random
    rows whose masked neurons are set to `values`, else None)."""
    gen = torch.Generator().manual_seed(seed)
    if strided:  # halves of vLLM's packed [T, 2I] gate_up
        packed = (torch.randn(n_tokens, 2 * n_neurons, generator=gen) * 3).to(dtype)
        gate, up = packed[:, :n_neurons], packed[:, n_neurons:]
    else:
        gate = (torch.randn(n_tokens, n_neurons, generator=gen) * 3).to(dtype)
        up = (torch.randn(n_tokens, n_neurons, generator=gen) * 3).to(dtype)
    zeros = torch.rand(n_tokens, n_neurons, generator=gen) < 0.05
    gate.masked_fill_(zeros, 0.0)
    gate.masked_fill_(zeros & (torch.rand(n_tokens, n_neurons, generator=gen) < 0.5), -0.0)

    lang_ids = {
        "all": torch.randint(0, n_langs, (n_tokens,), generator=gen),
        "none": torch.full((n_tokens,), -1),
        "mixed": torch.randint(-1, n_langs, (n_tokens,), generator=gen),
    }[langs].to(torch.int32)
    counts = torch.randint(0, 1000, (n_langs, n_neurons), generator=gen)

    mask_table = mask_ids = values = None
    if masks is not None:
        mask_table = {
            "empty": torch.zeros(n_masks, n_neurons, dtype=torch.bool),
            "full": torch.ones(n_masks, n_neurons, dtype=torch.bool),
            "random": torch.rand(n_masks, n_neurons, generator=gen) < 0.3,
            "set": torch.rand(n_masks, n_neurons, generator=gen) < 0.3,
        }[masks]
        mask_ids = torch.randint(-1, n_masks, (n_tokens,), generator=gen)  # several ids in one batch
        if masks == "set":
            values = make_values(n_masks, n_neurons, gen)
    return gate, up, lang_ids, counts, mask_table, mask_ids, values


def make_values(n_masks, n_neurons, gen):
    """float32 intervention values as steering uses them (means of activations, multiples of
    them): mostly not representable in 16 bits (rounding tested), a few exact zeros, one row
    of large ones."""
    values = torch.randn(n_masks, n_neurons, generator=gen) * 2
    values[torch.rand(n_masks, n_neurons, generator=gen) < 0.1] = 0.0
    values[-1] *= 50
    return values


def make_sum_table(n_langs, n_neurons, gen, dtype=torch.float64):
    """A sums table with random starting values, so that `+=` is checked."""
    return (torch.rand(n_langs, n_neurons, generator=gen, dtype=torch.float64) * 100).to(dtype)


def exp_argument(gate, activation):
    """z of act = x / (1 + exp(z)) in float64: -x for SiLU, -2y for GELU-tanh."""
    x = gate.double()
    return -x if activation == "silu" else -2 * SQRT_2_OVER_PI * (x + 0.044715 * x**3)


def act64(gate, activation):
    """The true activation of the dtype's gate, in float64. GELU-tanh as x sigmoid(2y), its
    exact value without the cancellation of 1 + tanh(y) for negative x."""
    x = gate.double()
    if activation == "silu":
        return F.silu(x)
    return x * torch.sigmoid(2 * SQRT_2_OVER_PI * (x + 0.044715 * x**3))


def float64_reference(gate, up, masks, mask_ids, activation="silu", values=None, *, with_act=False):
    """act(gate) * up in float64, masked neurons set to values rounded to gate's dtype (or 0);
    with_act: also the activation (after the interventions)."""
    act = act64(gate, activation)
    if masks is not None:
        chosen = masks[mask_ids.clamp(min=0)] & (mask_ids >= 0)[:, None]
        new = 0.0 if values is None else values.to(gate.dtype).double()[mask_ids.clamp(min=0)]
        act = torch.where(chosen, new, act)
    return (act * up.double(), act) if with_act else act * up.double()


def normal_elements(ref, act, dtype):
    """Elements whose activation and result are normal numbers of the dtype: below, a value
    rounded to the dtype has fewer significant bits, and relative errors say nothing."""
    tiny = torch.finfo(dtype).tiny
    return (ref.abs() >= tiny) & (act.abs() >= tiny)


@functools.lru_cache(maxsize=None)
def torch_error(dtype, activation):
    """Plain torch's largest relative error of act(gate) * up in this dtype on 2**16 random
    elements (gate and up ~ N(0, 9), as in make_inputs)."""
    gen = torch.Generator().manual_seed(1234)
    gate, up = (torch.randn(2, 256, 256, generator=gen) * 3).to(dtype).unbind(0)
    ref, act = float64_reference(gate, up, None, None, activation, with_act=True)
    plain = silu_mul_native(gate, up, activation=activation).double()
    normal = normal_elements(ref, act, dtype)
    return float(((plain - ref).abs()[normal] / ref.abs()[normal]).max())


def assert_dtype_rule(out, gate, up, masks, mask_ids, activation="silu", values=None):
    """max |out - ref64| <= 2 max |torch - ref64|, and the same per element, relative (on the
    normal elements)."""
    ref, act = float64_reference(gate, up, masks, mask_ids, activation, values, with_act=True)
    plain = silu_mul_native(gate, up, masks=masks, mask_ids=mask_ids, values=values, activation=activation)
    assert out.dtype == gate.dtype and out.shape == gate.shape
    assert torch.isfinite(out).all(), "unwritten (NaN-poisoned) or non-finite output"
    if not out.numel():
        return
    floor = torch_error(gate.dtype, activation)
    err, plain_err = (out.double() - ref).abs(), (plain.double() - ref).abs()
    plain_max = max(float(plain_err.max()), floor * float(ref.abs().max()))
    assert err.max() <= 2 * plain_max, f"max error {err.max():.3g} > 2 x torch's {plain_max:.3g}"
    nonzero = ref != 0
    assert (out[~nonzero] == 0).all(), "an exact zero (masked neuron or zero gate) came out nonzero"
    normal = normal_elements(ref, act, gate.dtype)
    rel, plain_rel = err[normal] / ref[normal].abs(), plain_err[normal] / ref[normal].abs()
    if rel.numel():
        plain_rel_max = max(float(plain_rel.max()), floor)
        assert rel.max() <= 2 * plain_rel_max, f"relative error {rel.max():.3g} > 2 x torch's {plain_rel_max:.3g}"


def assert_sums_rule(table, initial, gate, lang_ids, activation="silu", *, active=False, partials=1):
    """The sums rule of the module docstring for a table that started as `initial`; active:
    the sums over tokens with gate > 0 only (active_sums); partials: the fp32 partial sums
    the kernel adds to each entry (the token chunks of its launches), each a rounding of a
    float32 table (plain torch: one)."""
    n_langs = table.shape[0]
    keep = (lang_ids >= 0)[:, None] & ((gate > 0) if active else True)  # zeroed, not weighted by 0: 0 * inf = NaN
    a_torch = torch.where(keep, activation_native(gate, activation), 0)  # in the dtype
    a_true = torch.where(keep, act64(gate, activation), 0)
    weights = (lang_ids.long()[None, :] == torch.arange(n_langs)[:, None]).double()  # [n_langs, T]
    exact = initial.double() + weights @ a_true

    counted = lang_ids >= 0
    plain_acc = torch.zeros(n_langs, gate.shape[1]).index_add_(0, lang_ids[counted].long(), a_torch[counted].float())
    plain = initial + plain_acc.to(initial.dtype)
    assert table.dtype == initial.dtype and torch.isfinite(table).all()
    err, plain_err = (table.double() - exact).abs(), (plain.double() - exact).abs()
    table_unit = torch.finfo(table.dtype).eps / 2
    if err.numel():
        # As for outputs, torch's error is at least what its last roundings (of the largest
        # sum to fp32, then into the table) can make.
        floor = FP32_UNIT * float((exact - initial.double()).abs().max()) + table_unit * float(exact.abs().max())
        plain_max = max(float(plain_err.max()), floor)
        assert err.max() <= 2 * plain_max, f"max error {err.max():.3g} > 2 x torch's {plain_max:.3g}"

    n = weights @ keep.double()  # tokens summed into each entry
    gamma = n * FP32_UNIT / (1 - n * FP32_UNIT)
    beta = torch.finfo(gate.dtype).eps / 2 + 2 * FP32_UNIT * (1 + exp_argument(gate, activation).abs())
    act_err = torch.maximum((a_torch.double() - a_true).abs(), beta * a_true.abs()).nan_to_num(0.0)
    worst = weights @ act_err + gamma * (weights @ a_torch.double().abs()) + partials * table_unit * exact.abs()
    bad = err > 2 * worst
    assert not bad.any(), (f"{int(bad.sum())} entries beyond twice torch's worst case, e.g. error "
                           f"{err[bad][0]:.3g} vs bound {2 * worst[bad][0]:.3g}")
