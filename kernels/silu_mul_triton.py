"""Triton kernel: act(gate) * up (SiLU or GELU-tanh) with, in the same pass, per-language
counts of gate > 0, per-language sums of act(gate), and per-token interventions on neurons.

One pass over the data. The grid is (neuron blocks, token chunks); each program walks its
chunk of tokens in [BLOCK_T, BLOCK_I] tiles, writes the output and accumulates the
per-language statistics of its columns in registers as tiny matmuls,
    counts[lang, j] += one_hot[lang, t] @ (gate[t, j] > 0)
    sums[lang, j]   += one_hot[lang, t] @ act[t, j]   (active_sums: act where gate > 0)
which cost a few tensor-core instructions per tile whatever the mix of languages, and at
the end adds the nonzero entries to the tables with one atomic each (integer for counts,
so they are exact and deterministic; the float sums are fp32 per program, and in a float64
table the sum of a few fp32 partials is exact in any order in practice). Masks and
intervention values are gathered per token row from the small [n_masks, I] tables (they
stay in L2). Every feature is a constexpr flag: a call without it compiles without it.
Rounding and the activations: triton_tiles.py.
"""
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .triton_tiles import (INTERPRET, _add_table, _count_tile, _languages, _product_tile, _sum_tile, gelu_flag,
                           langs_pad, unit_stride)

COUNT_EXACT_LIMIT = 2**24  # fp32 accumulators hold every integer below this exactly


@triton.jit
def _silu_mul_kernel(
    gate_ptr, up_ptr, out_ptr,
    lang_ptr, counts_ptr, mask_id_ptr, masks_ptr, sums_ptr, active_ptr, values_ptr, nonfinite_ptr,
    n_tokens, n_neurons, n_langs, n_masks, tokens_per_program,
    stride_gt, stride_gi, stride_ut, stride_ui, stride_ot,
    stride_cl, stride_ci, stride_sl, stride_si, stride_al, stride_ai, stride_mm, stride_vm,
    COUNT: tl.constexpr, SUMS: tl.constexpr, ACTIVE_SUMS: tl.constexpr, MASK: tl.constexpr, SET: tl.constexpr,
    GELU: tl.constexpr, LANGS_PAD: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_I: tl.constexpr,
    PRECISE: tl.constexpr, INTERPRET: tl.constexpr, NONFINITE: tl.constexpr,
):
    pid_i = tl.program_id(0)
    pid_t = tl.program_id(1)
    cols = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    col_ok = cols < n_neurons
    t_begin = pid_t * tokens_per_program
    t_end = tl.minimum(t_begin + tokens_per_program, n_tokens)
    # Per-language statistics of these columns.
    acc_counts = tl.zeros((LANGS_PAD, BLOCK_I), dtype=tl.float32)
    acc_sums = tl.zeros((LANGS_PAD, BLOCK_I), dtype=tl.float32)
    acc_active = tl.zeros((LANGS_PAD, BLOCK_I), dtype=tl.float32)
    # rows with a non-finite gate of a counted token, folded over the tiles: a reduction along
    # the tile's columns only (within a warp); across rows once, at the end
    bad_rows = tl.zeros((BLOCK_T,), dtype=tl.int32)

    for t0 in range(t_begin, t_end, BLOCK_T):
        rows = t0 + tl.arange(0, BLOCK_T)
        row_ok = rows < t_end
        g32, act, act32 = _product_tile(gate_ptr, up_ptr, out_ptr, rows, row_ok, cols, col_ok, stride_gt, stride_gi,
                                        stride_ut, stride_ui, stride_ot, mask_id_ptr, masks_ptr, values_ptr, n_masks,
                                        stride_mm, stride_vm, GELU, PRECISE, MASK, SET, INTERPRET)
        if COUNT or SUMS or ACTIVE_SUMS:  # after the store, as a count-only tile always was (fewer live registers)
            hit, counted = _languages(lang_ptr, rows, row_ok, n_langs, LANGS_PAD)
            fired = g32 > 0
            if COUNT:
                acc_counts = _count_tile(acc_counts, hit, fired)
            if SUMS:
                acc_sums = _sum_tile(acc_sums, hit, counted[:, None], act, act32, INTERPRET)
            if ACTIVE_SUMS:
                acc_active = _sum_tile(acc_active, hit, counted[:, None] & fired, act, act32, INTERPRET)
            if NONFINITE and not SUMS:  # on the tile in registers: x - x is 0 for finite x only
                bad = ((g32 - g32) != 0) & counted[:, None] & col_ok[None, :]
                bad_rows = tl.maximum(bad_rows, tl.max(bad.to(tl.int32), axis=1))

    if NONFINITE:
        if SUMS:  # a non-finite act(gate) of a counted token spoils the fp32 sums: read it there, once
            spoiled = ((acc_sums - acc_sums) != 0).to(tl.int32)
            n_bad = tl.sum(tl.sum(spoiled, axis=1), axis=0)
        else:
            n_bad = tl.sum(bad_rows, axis=0)
        tl.atomic_add(nonfinite_ptr, n_bad, mask=n_bad > 0)
    if COUNT:
        _add_table(acc_counts, counts_ptr, cols, col_ok, n_langs, stride_cl, stride_ci, LANGS_PAD)
    if SUMS:
        _add_table(acc_sums, sums_ptr, cols, col_ok, n_langs, stride_sl, stride_si, LANGS_PAD)
    if ACTIVE_SUMS:
        _add_table(acc_active, active_ptr, cols, col_ok, n_langs, stride_al, stride_ai, LANGS_PAD)


class LaunchConfig(NamedTuple):
    block_t: int  # tokens per tile
    block_i: int  # neurons per tile (and per program)
    tokens_per_program: int  # best a multiple of block_t; the program loops over its tiles
    num_warps: int = 4
    num_stages: int = 2


def default_config(n_tokens, n_neurons, device, *, block_t=32, block_i=128, num_warps=None,
                   programs_per_sm=8, sums=False) -> LaunchConfig:
    """On a GPU: 32 x 128 tiles and enough token chunks for about 8 programs per SM (a
    full wave with many loads in flight, few atomics). 4 warps, or 8 with activation sums
    (sums=True): their two more [languages, block_i] accumulators and dots need about 175
    registers per thread at 4 warps (bf16, sm_90), 97 at 8, about the 92 of counting alone
    at 4, so as many warps stay resident. In the interpreter (~ms per program instance and per op): few,
    large programs. benches/bench_gpu_silu_mul.py sweeps the knobs."""
    if INTERPRET or device.type != "cuda":
        return LaunchConfig(max(16, min(256, triton.next_power_of_2(n_tokens))), 256, n_tokens)
    if num_warps is None:
        num_warps = 8 if sums else 4
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    col_blocks = triton.cdiv(n_neurons, block_i)
    chunks = max(1, min(triton.cdiv(programs_per_sm * sms, col_blocks), triton.cdiv(n_tokens, block_t)))
    tokens_per_program = triton.cdiv(triton.cdiv(n_tokens, chunks), block_t) * block_t
    return LaunchConfig(block_t, block_i, tokens_per_program, num_warps)


def silu_mul_triton(gate, up, lang_ids=None, counts=None, masks=None, mask_ids=None, *,
                    sums=None, active_sums=None, values=None, activation="silu",
                    config=None, out=None, precise=None, nonfinite=None):
    """Launch the kernel on checked 2-D inputs (see lna.kernels.silu_mul for the contract).

    config (a LaunchConfig) overrides the default (tests and benchmarks); out, if given, is
    a contiguous [T, I] tensor to write into; precise overrides the choice of exp and
    division on a GPU (benchmarks).
    """
    if gate.device.type == "cpu" and not INTERPRET:
        raise RuntimeError("silu_mul: the Triton backend on CPU tensors needs TRITON_INTERPRET=1 set before "
                           "lna.kernels.silu_mul_triton is first imported; or use backend='torch'")
    gelu = gelu_flag(activation)
    n_tokens, n_neurons = gate.shape
    if out is None:
        out = torch.empty((n_tokens, n_neurons), dtype=gate.dtype, device=gate.device)
    if n_tokens == 0 or n_neurons == 0:
        return out
    cfg = config or default_config(n_tokens, n_neurons, gate.device,
                                   sums=sums is not None or active_sums is not None)
    block_t, block_i, tokens_per_program = cfg.block_t, cfg.block_i, cfg.tokens_per_program
    tables = [t for t in (counts, sums, active_sums) if t is not None]
    mask = masks is not None
    if counts is not None and tokens_per_program >= COUNT_EXACT_LIMIT:
        raise ValueError(f"silu_mul: at most {COUNT_EXACT_LIMIT - 1} tokens per program, got {tokens_per_program}")
    dummy = out  # stands in for absent pointers; never dereferenced (constexpr flags)
    lang_ids = lang_ids.contiguous() if tables else dummy
    mask_ids = mask_ids.contiguous() if mask else dummy
    # Triton reads bool tensors bytewise through a uint8 view; rows are read with unit stride.
    masks_u8 = unit_stride(masks).view(torch.uint8) if mask else dummy
    values = unit_stride(values) if values is not None else None
    grid = (triton.cdiv(n_neurons, block_i), triton.cdiv(n_tokens, tokens_per_program))
    _silu_mul_kernel[grid](
        gate, up, out,
        lang_ids, _or(counts, dummy), mask_ids, masks_u8, _or(sums, dummy), _or(active_sums, dummy),
        _or(values, dummy), _or(nonfinite, dummy),
        n_tokens, n_neurons, tables[0].shape[0] if tables else 0, masks.shape[0] if mask else 0,
        tokens_per_program,
        gate.stride(0), gate.stride(1), up.stride(0), up.stride(1), out.stride(0),
        *_strides(counts), *_strides(sums), *_strides(active_sums),
        masks_u8.stride(0) if mask else 0, values.stride(0) if values is not None else 0,
        COUNT=counts is not None, SUMS=sums is not None, ACTIVE_SUMS=active_sums is not None, MASK=mask,
        SET=mask and values is not None, GELU=gelu,
        LANGS_PAD=langs_pad(tables[0].shape[0]) if tables else 16,
        BLOCK_T=block_t, BLOCK_I=block_i, INTERPRET=INTERPRET, NONFINITE=nonfinite is not None and bool(tables),
        PRECISE=(not INTERPRET and gate.dtype == torch.float32) if precise is None else precise,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out


def _or(t, dummy):
    return dummy if t is None else t


def _strides(t):
    return (0, 0) if t is None else t.stride()

