"""The error rules every kernel is held to, in one place (the tests and the GPU check use them).

Output rule: a kernel's error against a float64 computation is at most twice that of plain
torch in the same dtype; checked on the largest error and on every element relative to its
size (where the activation and the result are normal numbers of the dtype; the subnormal
rest is bound by the first check). Torch's error is the larger of its error on the data at
hand and its largest relative error on a fixed sample of 2**16 elements (torch_error): a
tiny case (T = 7, I = 1) holds too few elements to show torch's usual worst case, and would
pass or fail by the luck of its roundings. Exact zeros of the float64 result (a zero gate,
a neuron set to 0) must come out exactly 0.

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

Each check returns a report {"ok": bool, "why": str, ...figures} rather than asserting, so
the GPU check can record it and the tests assert on it.
"""
import functools

import torch
import torch.nn.functional as F

from lna.kernels.reference import activation_native, silu_mul_native

FP32_UNIT = 2.0**-24
SQRT_2_OVER_PI = 0.7978845608028654


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
        chosen = masks[mask_ids.clamp(min=0).long()] & (mask_ids >= 0)[:, None]
        new = 0.0 if values is None else values.to(gate.dtype).double()[mask_ids.clamp(min=0).long()]
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
    elements (gate and up ~ N(0, 9)), on the CPU."""
    gen = torch.Generator().manual_seed(1234)
    gate, up = (torch.randn(2, 256, 256, generator=gen) * 3).to(dtype).unbind(0)
    ref, act = float64_reference(gate, up, None, None, activation, with_act=True)
    plain = silu_mul_native(gate, up, activation=activation).double()
    normal = normal_elements(ref, act, dtype)
    return float(((plain - ref).abs()[normal] / ref.abs()[normal]).max())


def check_output(out, gate, up, masks=None, mask_ids=None, activation="silu", values=None, *, plain=None) -> dict:
    """The output rule for `out` = the kernel's act(gate) * up (with interventions); `plain`:
    plain torch's output on the same inputs (computed here with silu_mul_native if None)."""
    ref, act = float64_reference(gate, up, masks, mask_ids, activation, values, with_act=True)
    if plain is None:
        plain = silu_mul_native(gate, up, masks=masks, mask_ids=mask_ids, values=values, activation=activation)
    report = {"ok": False, "why": ""}
    if out.dtype != gate.dtype or out.shape != gate.shape:
        report["why"] = f"output {out.dtype} {tuple(out.shape)}, expected {gate.dtype} {tuple(gate.shape)}"
        return report
    if not torch.isfinite(out).all():
        report["why"] = "unwritten (NaN-poisoned) or non-finite output"
        return report
    if not out.numel():
        return report | {"ok": True}
    floor = torch_error(gate.dtype, activation)
    err, plain_err = (out.double() - ref).abs(), (plain.double() - ref).abs()
    plain_max = max(float(plain_err.max()), floor * float(ref.abs().max()))
    report |= {"max_error": float(err.max()), "torch_max_error": plain_max}
    if err.max() > 2 * plain_max:
        report["why"] = f"max error {err.max():.3g} > 2 x torch's {plain_max:.3g}"
        return report
    if not (out[ref == 0] == 0).all():
        report["why"] = "an exact zero (masked neuron or zero gate) came out nonzero"
        return report
    normal = normal_elements(ref, act, gate.dtype)
    rel, plain_rel = err[normal] / ref[normal].abs(), plain_err[normal] / ref[normal].abs()
    if rel.numel():
        plain_rel_max = max(float(plain_rel.max()), floor)
        report |= {"max_rel_error": float(rel.max()), "torch_max_rel_error": plain_rel_max}
        if rel.max() > 2 * plain_rel_max:
            report["why"] = f"relative error {rel.max():.3g} > 2 x torch's {plain_rel_max:.3g}"
            return report
    return report | {"ok": True}


def check_sums(table, initial, gate, lang_ids, activation="silu", *, active=False, partials=1) -> dict:
    """The sums rule for a table that started as `initial`; active: the sums over tokens with
    gate > 0 only (active_sums); partials: the fp32 partial sums the kernel adds to each
    entry (the token chunks of its launches), each a rounding of a float32 table (plain
    torch: one)."""
    n_langs, dev = table.shape[0], gate.device
    keep = (lang_ids >= 0)[:, None] & ((gate > 0) if active else True)  # zeroed, not weighted by 0: 0 * inf = NaN
    a_torch = torch.where(keep, activation_native(gate, activation), 0)  # in the dtype
    a_true = torch.where(keep, act64(gate, activation), 0)
    weights = (lang_ids.long()[None, :] == torch.arange(n_langs, device=dev)[:, None]).double()  # [n_langs, T]
    exact = initial.double() + weights @ a_true

    counted = lang_ids >= 0
    plain_acc = torch.zeros(n_langs, gate.shape[1], device=dev).index_add_(
        0, lang_ids[counted].long(), a_torch[counted].float())
    plain = initial + plain_acc.to(initial.dtype)
    report = {"ok": False, "why": ""}
    if table.dtype != initial.dtype or not torch.isfinite(table).all():
        report["why"] = f"table {table.dtype} (started {initial.dtype}), finite: {bool(torch.isfinite(table).all())}"
        return report
    err, plain_err = (table.double() - exact).abs(), (plain.double() - exact).abs()
    table_unit = torch.finfo(table.dtype).eps / 2
    if err.numel():
        # As for outputs, torch's error is at least what its last roundings (of the largest
        # sum to fp32, then into the table) can make.
        floor = FP32_UNIT * float((exact - initial.double()).abs().max()) + table_unit * float(exact.abs().max())
        plain_max = max(float(plain_err.max()), floor)
        report |= {"max_error": float(err.max()), "torch_max_error": plain_max}
        if err.max() > 2 * plain_max:
            report["why"] = f"max error {err.max():.3g} > 2 x torch's {plain_max:.3g}"
            return report

    n = weights @ keep.double()  # tokens summed into each entry
    gamma = n * FP32_UNIT / (1 - n * FP32_UNIT)
    beta = torch.finfo(gate.dtype).eps / 2 + 2 * FP32_UNIT * (1 + exp_argument(gate, activation).abs())
    act_err = torch.maximum((a_torch.double() - a_true).abs(), beta * a_true.abs()).nan_to_num(0.0)
    worst = weights @ act_err + gamma * (weights @ a_torch.double().abs()) + partials * table_unit * exact.abs()
    bad = err > 2 * worst
    if bad.any():
        report["why"] = (f"{int(bad.sum())} entries beyond twice torch's worst case, e.g. error "
                         f"{err[bad][0]:.3g} vs bound {2 * worst[bad][0]:.3g}")
        return report
    return report | {"ok": True}
