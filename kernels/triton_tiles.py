"""Tile functions shared by the Triton kernels (silu_mul_triton, expert_count_triton and
gemm_silu_mul): the product tile (load, activation, interventions, store), the
activation, the per-language counts and sums of a tile, the interventions and the product,
and the atomic update of a [languages, neurons] table.

Rounding as the reference: the activation in fp32, cast to the input dtype (what the
model's act_fn returns, and what the statistics sum), then the product rounded once to the
input dtype (the fp32 product of two 16-bit floats is exact, so this is the correctly
rounded 16-bit product torch computes). For fp32 inputs on CUDA (PRECISE) the exp is
libdevice's expf and the division IEEE (div.rn), as in torch's CUDA kernels: Triton's own
fp32 exp (ex2.approx of x * log2(e)) and `/` (div.full) lose a few ulp, which shows in an
fp32 output but lies far below the rounding of a 16-bit one, where the cheaper
instructions keep the kernel memory-bound.

GELU-tanh is computed as x / (1 + exp(-2y)), y = sqrt(2/pi) (x + 0.044715 x^3): the same
function as torch's 0.5 x (1 + tanh(y)) (1 + tanh(y) = 2 sigmoid(2y)), for the cost of
SiLU plus two multiply-adds and a select, and without the cancellation of 1 + tanh(y) for
negative x, so its error against float64 is at most torch's own
(tests/test_silu_mul_gelu.py); where that cancellation is complete in torch's fp32
(tanh(y) rounds to -1: -2y > 26 ln 2, x < -5.16), it returns torch's exact zero (-0.0,
as torch) rather than a value below 1.5e-8 |x|.
"""
import os

import triton
import triton.language as tl

from .reference import check_activation

try:
    from triton.language.extra import libdevice
except ImportError:  # some builds only ship the CUDA flavour
    from triton.language.extra.cuda import libdevice

# Read when this module is imported, as triton.jit does.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _activation(g32, dtype: tl.constexpr, GELU: tl.constexpr, PRECISE: tl.constexpr, INTERPRET: tl.constexpr):
    """act of a gate tile given in fp32, rounded to dtype: SiLU x / (1 + exp(-x)), or
    GELU-tanh as x / (1 + exp(-2y)) with -2y = x (-2 sqrt(2/pi) - 2 sqrt(2/pi) 0.044715 x^2)."""
    if GELU:
        z = g32 * (-1.5957691216057308 + -0.07135481627260025 * (g32 * g32))
    else:
        z = -g32
    if PRECISE:  # expf and IEEE division, as torch's CUDA kernels
        a = tl.math.div_rn(g32, 1.0 + libdevice.exp(z))
    elif INTERPRET:  # numpy's fp32 exp is up to 2.5 ulp off; in fp64, rounded once, it is as close as torch's
        a = g32 / (1.0 + tl.exp(z.to(tl.float64)).to(tl.float32))
    else:  # ex2.approx and div.full on a GPU
        a = g32 / (1.0 + tl.exp(z))
    if GELU:  # where torch's 1 + tanh(y) is exactly 0 in fp32 (tanh(y) rounds to -1), so is its GELU
        a = tl.where(z > 18.021826694558577, 0.0 * g32, a)
    return _round(a, dtype, INTERPRET)


@triton.jit
def _product_tile(gate_ptr, up_ptr, out_ptr, rows, row_ok, cols, col_ok, stride_gt, stride_gi, stride_ut, stride_ui,
                  stride_ot, mask_id_ptr, masks_ptr, values_ptr, n_masks, stride_mm, stride_vm, GELU: tl.constexpr,
                  PRECISE: tl.constexpr, MASK: tl.constexpr, SET: tl.constexpr, INTERPRET: tl.constexpr):
    """One [rows, cols] tile of the product: gate and up loaded, act(gate) * up (intervened)
    stored to out. Returns (gate in fp32, act in gate's dtype, act in fp32) for the tile's
    statistics."""
    rows64 = rows.to(tl.int64)
    ok = row_ok[:, None] & col_ok[None, :]
    gate = tl.load(gate_ptr + rows64[:, None] * stride_gt + cols[None, :] * stride_gi, mask=ok, other=0.0)
    up = tl.load(up_ptr + rows64[:, None] * stride_ut + cols[None, :] * stride_ui, mask=ok, other=0.0)
    g32 = _to32(gate, INTERPRET)
    act = _activation(g32, gate.dtype, GELU, PRECISE, INTERPRET)  # the raw activation, in gate's dtype
    act32 = _to32(act, INTERPRET)
    out = _intervene_mul(act32, _to32(up, INTERPRET), gate.dtype, rows, row_ok, cols, col_ok, mask_id_ptr,
                         masks_ptr, values_ptr, n_masks, stride_mm, stride_vm, MASK, SET, INTERPRET)
    tl.store(out_ptr + rows64[:, None] * stride_ot + cols[None, :], out, mask=ok)
    return g32, act, act32


@triton.jit
def _intervene_mul(act32, up32, dtype: tl.constexpr, rows, row_ok, cols, col_ok, mask_id_ptr, masks_ptr, values_ptr,
                   n_masks, stride_mm, stride_vm, MASK: tl.constexpr, SET: tl.constexpr, INTERPRET: tl.constexpr):
    """act * up rounded to dtype (both given in fp32); with MASK, act is first replaced where
    masks[mask_ids[row], col] (ids out of range: no mask) by values[mask_ids[row], col]
    rounded to the dtype (SET) or by 0."""
    a = act32
    if MASK:
        mid = tl.load(mask_id_ptr + rows, mask=row_ok, other=-1)
        has_mask = (mid >= 0) & (mid < n_masks)
        mrow = tl.where(has_mask, mid, 0).to(tl.int64)
        sel = has_mask[:, None] & col_ok[None, :]
        drop = tl.load(masks_ptr + mrow[:, None] * stride_mm + cols[None, :], mask=sel, other=0) != 0
        if SET:
            value = tl.load(values_ptr + mrow[:, None] * stride_vm + cols[None, :], mask=drop, other=0.0)
            a = tl.where(drop, _to32(_round(value, dtype, INTERPRET), INTERPRET), a)
        else:
            a = tl.where(drop, 0.0, a)
    return _round(a * up32, dtype, INTERPRET)


@triton.jit
def _languages(lang_ptr, rows, row_ok, n_langs, LANGS_PAD: tl.constexpr):
    """hit[lang, row]: the row's language id is lang (ids < 0 match none); counted[row]: the
    id lies in [0, n_langs)."""
    lang = tl.load(lang_ptr + rows, mask=row_ok, other=-1)
    hit = tl.arange(0, LANGS_PAD)[:, None] == lang[None, :]
    return hit, (lang >= 0) & (lang < n_langs)


@triton.jit
def _count_tile(acc, hit, fired):
    """acc[lang, col] += number of rows of that language with fired (gate > 0), as one_hot @
    fired (0/1 values and sums below 2**24 are exact in fp16 operands and the fp32
    accumulator). Padding was loaded as gate 0: never fired."""
    return tl.dot(hit.to(tl.float16), fired.to(tl.float16), acc)


@triton.jit
def _sum_tile(acc, hit, keep, act, act32, INTERPRET: tl.constexpr):
    """acc[lang, col] += sum of act over the rows of that language where keep, as one_hot @ x
    with exact products and fp32 accumulation; act in its dtype, act32 the same in fp32.
    Rows not kept are zeroed, not only weighted by 0: 0 * inf would be NaN."""
    if INTERPRET or act.dtype == tl.float32:  # "ieee": tf32 would round the activations to 10 bits
        acc = tl.dot(hit.to(tl.float32), tl.where(keep, act32, 0.0), acc, input_precision="ieee")
    else:  # 16-bit activations (and 0/1) are exact tensor-core operands
        acc = tl.dot(hit.to(act.dtype), tl.where(keep, act, tl.zeros_like(act)), acc)
    return acc


@triton.jit
def _add_table(acc, table_ptr, cols, col_ok, n_langs, stride_l, stride_i, LANGS_PAD: tl.constexpr):
    """table[lang, col] += acc with one atomic per nonzero entry (for counts exact, and the
    same result in any order)."""
    langs = tl.arange(0, LANGS_PAD)
    inc = acc.to(table_ptr.dtype.element_ty)
    ptrs = table_ptr + langs[:, None].to(tl.int64) * stride_l + cols[None, :] * stride_i
    tl.atomic_add(ptrs, inc, mask=(langs[:, None] < n_langs) & col_ok[None, :] & (inc != 0), sem="relaxed")


@triton.jit
def _to32(x, INTERPRET: tl.constexpr):
    """x widened to fp32 (exact). The interpreter converts bf16 bit by bit in Python-level
    numpy (slow); there a bf16 value is its top 16 bits of an fp32."""
    if INTERPRET:
        if x.dtype == tl.bfloat16:
            y = (x.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
        else:
            y = x.to(tl.float32)
    else:
        y = x.to(tl.float32)
    return y


@triton.jit
def _round(x, dtype: tl.constexpr, INTERPRET: tl.constexpr):
    """fp32 -> dtype, round to nearest even. The interpreter's fp32 -> bf16 cast truncates,
    so there the rounding is done on the bits; on a GPU the cast instruction does it."""
    if INTERPRET:
        if dtype == tl.bfloat16:
            bits = x.to(tl.uint32, bitcast=True)
            bits = bits + (0x7FFF + ((bits >> 16) & 1))
            bits = tl.where(x != x, 0x7FC00000, bits)  # NaN stays NaN
            y = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        else:
            y = x.to(dtype)
    else:
        y = x.to(dtype)
    return y


def gelu_flag(activation) -> bool:
    """The GELU constexpr for an activation name (launchers called directly check it too)."""
    check_activation(activation)
    return activation == "gelu_tanh"


def langs_pad(n_langs: int) -> int:
    """Rows of the one-hot tile: a power of two, at least 16 (the smallest dot)."""
    return max(16, triton.next_power_of_2(n_langs))


def unit_stride(t):
    """t, or a contiguous copy where its rows are not read with unit stride (mask and value tables)."""
    return t if t.stride(-1) == 1 else t.contiguous()
