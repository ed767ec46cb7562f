"""Triton kernel: SiLU(gate) * up, per-language counts of gate > 0, per-token neuron masks.

One pass over the data. The grid is (neuron blocks, token chunks); each program walks its
chunk of tokens in [BLOCK_T, BLOCK_I] tiles, writes the output and accumulates the
per-language counts of its columns in registers as a tiny matmul,
    acc[lang, j] += one_hot[lang, t] @ (gate[t, j] > 0),
which costs a few tensor-core instructions per tile whatever the mix of languages, and at
the end adds the nonzero entries of acc to counts with one integer atomic each (so the
result is exact and deterministic). Masks are gathered per token row from the small
[n_masks, I] table (it stays in L2).

Rounding as the reference: SiLU in fp32 as x / (1 + exp(-x)), cast to the input dtype,
then the product rounded once to the input dtype (the fp32 product of two 16-bit floats is
exact, so this is the correctly rounded 16-bit product torch computes). For fp32 inputs on
CUDA the exp is libdevice's expf and the division IEEE (div.rn), as in torch's CUDA silu:
Triton's own fp32 exp (ex2.approx of x * log2(e)) and `/` (div.full) lose a few ulp, which
shows in an fp32 output but lies far below the rounding of a 16-bit one, where the cheaper
instructions keep the kernel memory-bound.
"""
import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

try:
    from triton.language.extra import libdevice
except ImportError:  # some builds only ship the CUDA flavour
    from triton.language.extra.cuda import libdevice

# Read when this module is imported, as triton.jit does.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
COUNT_EXACT_LIMIT = 2**24  # fp32 accumulators hold every integer below this exactly


@triton.jit
def _silu_mul_kernel(
    gate_ptr, up_ptr, out_ptr,
    lang_ptr, counts_ptr, mask_id_ptr, masks_ptr,
    n_tokens, n_neurons, n_langs, n_masks, tokens_per_program,
    stride_gt, stride_gi, stride_ut, stride_ui, stride_ot,
    stride_cl, stride_ci, stride_mm,
    COUNT: tl.constexpr, MASK: tl.constexpr, LANGS_PAD: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_I: tl.constexpr, PRECISE: tl.constexpr, INTERPRET: tl.constexpr,
):
    pid_i = tl.program_id(0)
    pid_t = tl.program_id(1)
    cols = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    col_ok = cols < n_neurons
    t_begin = pid_t * tokens_per_program
    t_end = tl.minimum(t_begin + tokens_per_program, n_tokens)
    acc = tl.zeros((LANGS_PAD, BLOCK_I), dtype=tl.float32)  # per-language counts of these columns

    for t0 in range(t_begin, t_end, BLOCK_T):
        rows = t0 + tl.arange(0, BLOCK_T)
        row_ok = rows < t_end
        rows64 = rows.to(tl.int64)
        ok = row_ok[:, None] & col_ok[None, :]
        gate = tl.load(gate_ptr + rows64[:, None] * stride_gt + cols[None, :] * stride_gi, mask=ok, other=0.0)
        up = tl.load(up_ptr + rows64[:, None] * stride_ut + cols[None, :] * stride_ui, mask=ok, other=0.0)
        out = _silu_mul_tile(gate, up, rows, row_ok, cols, col_ok, mask_id_ptr, masks_ptr, n_masks, stride_mm,
                             MASK, PRECISE, INTERPRET)
        tl.store(out_ptr + rows64[:, None] * stride_ot + cols[None, :], out, mask=ok)
        if COUNT:
            acc = _count_tile(acc, gate, lang_ptr, rows, row_ok, LANGS_PAD)

    if COUNT:
        _add_counts(acc, counts_ptr, cols, col_ok, n_langs, stride_cl, stride_ci, LANGS_PAD)


@triton.jit
def _silu_mul_tile(gate, up, rows, row_ok, cols, col_ok, mask_id_ptr, masks_ptr, n_masks, stride_mm,
                   MASK: tl.constexpr, PRECISE: tl.constexpr, INTERPRET: tl.constexpr):
    """SiLU(gate) * up of a [rows, cols] tile in gate's dtype, rounded like the reference;
    with MASK, zero the activation where masks[mask_ids[row], col] (ids out of range: none)."""
    g = gate.to(tl.float32)
    if PRECISE:  # expf and IEEE division, as torch's CUDA silu
        act = tl.math.div_rn(g, 1.0 + libdevice.exp(-g))
    else:  # ex2.approx and div.full on a GPU; numpy's exp and division in the interpreter
        act = g / (1.0 + tl.exp(-g))
    if MASK:
        mid = tl.load(mask_id_ptr + rows, mask=row_ok, other=-1)
        has_mask = (mid >= 0) & (mid < n_masks)
        mrow = tl.where(has_mask, mid, 0).to(tl.int64)
        drop = tl.load(masks_ptr + mrow[:, None] * stride_mm + cols[None, :],
                       mask=has_mask[:, None] & col_ok[None, :], other=0)
        act = tl.where(drop != 0, 0.0, act)
    act = _round(act, gate.dtype, INTERPRET).to(tl.float32)
    return _round(act * up.to(tl.float32), gate.dtype, INTERPRET)


@triton.jit
def _count_tile(acc, gate, lang_ptr, rows, row_ok, LANGS_PAD: tl.constexpr):
    """acc[lang, col] += number of rows of that language with gate > 0, as one_hot @ active
    (0/1 values and sums below 2**24 are exact in fp16 operands and the fp32 accumulator)."""
    lang = tl.load(lang_ptr + rows, mask=row_ok, other=-1)
    langs = tl.arange(0, LANGS_PAD)
    one_hot = (langs[:, None] == lang[None, :]).to(tl.float16)  # ids < 0 match no row
    active = (gate.to(tl.float32) > 0).to(tl.float16)  # padding was loaded as 0: never active
    return tl.dot(one_hot, active, acc)


@triton.jit
def _add_counts(acc, counts_ptr, cols, col_ok, n_langs, stride_cl, stride_ci, LANGS_PAD: tl.constexpr):
    """counts[lang, col] += acc with one integer atomic per nonzero entry (exact, and the
    same result in any order)."""
    langs = tl.arange(0, LANGS_PAD)
    inc = acc.to(counts_ptr.dtype.element_ty)
    ptrs = counts_ptr + langs[:, None].to(tl.int64) * stride_cl + cols[None, :] * stride_ci
    tl.atomic_add(ptrs, inc, mask=(langs[:, None] < n_langs) & col_ok[None, :] & (inc > 0), sem="relaxed")


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


class LaunchConfig(NamedTuple):
    block_t: int  # tokens per tile
    block_i: int  # neurons per tile (and per program)
    tokens_per_program: int  # best a multiple of block_t; the program loops over its tiles
    num_warps: int = 4
    num_stages: int = 2


def default_config(n_tokens, n_neurons, device, *, block_t=32, block_i=128, num_warps=4,
                   programs_per_sm=8) -> LaunchConfig:
    """On a GPU: 32 x 128 tiles and enough token chunks for about 8 programs per SM (a
    full wave with many loads in flight, few atomics). In the interpreter (~ms per program
    instance and per op): few, large programs. benches/gpu_silu_mul.py sweeps the knobs."""
    if INTERPRET or device.type != "cuda":
        return LaunchConfig(64, 256, n_tokens)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    col_blocks = triton.cdiv(n_neurons, block_i)
    chunks = max(1, min(triton.cdiv(programs_per_sm * sms, col_blocks), triton.cdiv(n_tokens, block_t)))
    tokens_per_program = triton.cdiv(triton.cdiv(n_tokens, chunks), block_t) * block_t
    return LaunchConfig(block_t, block_i, tokens_per_program, num_warps)


def silu_mul_triton(gate, up, lang_ids=None, counts=None, masks=None, mask_ids=None, *,
                    config=None, out=None, precise=None):
    """Launch the kernel on checked 2-D inputs (see lna.kernels.silu_mul for the contract).

    config (a LaunchConfig) overrides the default (tests and benchmarks); out, if given, is
    a contiguous [T, I] tensor to write into; precise overrides the choice of exp and
    division on a GPU (benchmarks).
    """
    if gate.device.type == "cpu" and not INTERPRET:
        raise RuntimeError("silu_mul: the Triton backend on CPU tensors needs TRITON_INTERPRET=1 set before "
                           "lna.kernels.silu_mul_triton is first imported; or use backend='torch'")
    n_tokens, n_neurons = gate.shape
    if out is None:
        out = torch.empty((n_tokens, n_neurons), dtype=gate.dtype, device=gate.device)
    if n_tokens == 0 or n_neurons == 0:
        return out
    cfg = config or default_config(n_tokens, n_neurons, gate.device)
    block_t, block_i, tokens_per_program = cfg.block_t, cfg.block_i, cfg.tokens_per_program
    count, mask = counts is not None, masks is not None
    if count and tokens_per_program >= COUNT_EXACT_LIMIT:
        raise ValueError(f"silu_mul: at most {COUNT_EXACT_LIMIT - 1} tokens per program, got {tokens_per_program}")
    dummy = out  # stands in for absent pointers; never dereferenced (constexpr flags)
    lang_ids = lang_ids.contiguous() if count else dummy
    mask_ids = mask_ids.contiguous() if mask else dummy
    # Triton reads bool tensors bytewise through a uint8 view.
    masks_u8 = masks.view(torch.uint8) if mask else dummy
    grid = (triton.cdiv(n_neurons, block_i), triton.cdiv(n_tokens, tokens_per_program))
    _silu_mul_kernel[grid](
        gate, up, out,
        lang_ids, counts if count else dummy, mask_ids, masks_u8,
        n_tokens, n_neurons, counts.shape[0] if count else 0, masks.shape[0] if mask else 0,
        tokens_per_program,
        gate.stride(0), gate.stride(1), up.stride(0), up.stride(1), out.stride(0),
        counts.stride(0) if count else 0, counts.stride(1) if count else 0,
        masks_u8.stride(0) if mask else 0,
        COUNT=count, MASK=mask,
        LANGS_PAD=max(16, triton.next_power_of_2(counts.shape[0])) if count else 16,
        BLOCK_T=block_t, BLOCK_I=block_i, INTERPRET=INTERPRET,
        PRECISE=(not INTERPRET and gate.dtype == torch.float32) if precise is None else precise,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out
