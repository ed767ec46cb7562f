"""Triton kernel of expert_silu_mul: act(gate) * up over rows grouped by expert, counting
gate > 0 per expert, language and neuron in the same pass.

The grid is (neuron blocks, row chunks); the chunks are cut per expert segment on the host
(tile_start, tile_end, tile_expert), so a program's rows are one expert's and its
accumulator is the dense kernel's [LANGS_PAD, BLOCK_I] one-hot product, added at the end
into counts[expert] with one integer atomic per nonzero entry (exact, order-free). The
tiles (product, activation, rounding, count, atomic add) are silu_mul_triton's (triton_tiles.py).
"""
import torch
import triton
import triton.language as tl

from .triton_tiles import INTERPRET, _add_table, _count_tile, _languages, _product_tile, gelu_flag, langs_pad

COUNT_EXACT_LIMIT = 2**24  # fp32 accumulators hold every integer below this exactly


@triton.jit
def _expert_silu_mul_kernel(
    gate_ptr, up_ptr, out_ptr, lang_ptr, counts_ptr, start_ptr, end_ptr, expert_ptr, mask_id_ptr, masks_ptr,
    values_ptr, n_neurons, n_langs, n_masks, stride_gt, stride_gi, stride_ut, stride_ui, stride_ot,
    stride_ce, stride_cl, stride_ci, stride_mm, stride_me, stride_vm, stride_ve,
    COUNT: tl.constexpr, MASK: tl.constexpr, SET: tl.constexpr, GELU: tl.constexpr, LANGS_PAD: tl.constexpr, BLOCK_T: tl.constexpr,
    BLOCK_I: tl.constexpr, PRECISE: tl.constexpr, INTERPRET: tl.constexpr,
):
    pid_i = tl.program_id(0)
    tile = tl.program_id(1)
    cols = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    col_ok = cols < n_neurons
    t_begin = tl.load(start_ptr + tile)
    t_end = tl.load(end_ptr + tile)
    acc = tl.zeros((LANGS_PAD, BLOCK_I), dtype=tl.float32)
    expert = tl.load(expert_ptr + tile).to(tl.int64)
    # this expert's [n_masks, I] slices of the [n_masks, E, I] mask and value tables
    masks_e = masks_ptr + expert * stride_me
    values_e = values_ptr + expert * stride_ve
    for t0 in range(t_begin, t_end, BLOCK_T):
        rows = t0 + tl.arange(0, BLOCK_T)
        row_ok = rows < t_end
        g32, _, _ = _product_tile(gate_ptr, up_ptr, out_ptr, rows, row_ok, cols, col_ok, stride_gt, stride_gi,
                                  stride_ut, stride_ui, stride_ot, mask_id_ptr, masks_e, values_e, n_masks, stride_mm,
                                  stride_vm, GELU, PRECISE, MASK, SET, INTERPRET)
        if COUNT:
            hit, counted = _languages(lang_ptr, rows, row_ok, n_langs, LANGS_PAD)
            acc = _count_tile(acc, hit, g32 > 0)
    if COUNT:
        _add_table(acc, counts_ptr + expert * stride_ce, cols, col_ok, n_langs, stride_cl, stride_ci, LANGS_PAD)


def tiles(bounds, rows_per_program):
    """(start, end, expert) of every program's rows: each expert segment cut into chunks of
    at most rows_per_program rows (empty segments get none)."""
    start, end, expert = [], [], []
    for e in range(len(bounds) - 1):
        for a in range(bounds[e], bounds[e + 1], rows_per_program):
            start.append(a)
            end.append(min(a + rows_per_program, bounds[e + 1]))
            expert.append(e)
    return start, end, expert


def expert_silu_mul_triton(gate, up, bounds, lang_ids=None, counts=None, masks=None, mask_ids=None, values=None, *,
                           activation="silu",
                           block_t=32, block_i=128, rows_per_program=None, num_warps=4):
    """Launch on checked inputs (lna.kernels.expert_count.expert_silu_mul); bounds: the E + 1
    segment offsets as ints. rows_per_program: rows per program (a multiple of block_t);
    default 256 on a GPU, whole segments in the interpreter."""
    if gate.device.type == "cpu" and not INTERPRET:
        raise RuntimeError("expert_silu_mul: the Triton backend on CPU tensors needs TRITON_INTERPRET=1 set before "
                           "lna.kernels is first imported; or use backend='torch'")
    n_rows, n_neurons = gate.shape
    out = torch.empty((n_rows, n_neurons), dtype=gate.dtype, device=gate.device)
    if n_rows == 0 or n_neurons == 0:
        return out
    if INTERPRET or gate.device.type != "cuda":
        block_t, block_i = max(16, min(128, triton.next_power_of_2(n_rows))), 256
        rows_per_program = rows_per_program or n_rows
    rows_per_program = rows_per_program or 256
    if counts is not None and rows_per_program >= COUNT_EXACT_LIMIT:
        raise ValueError(f"expert_silu_mul: at most {COUNT_EXACT_LIMIT - 1} rows per program, got {rows_per_program}")
    start, end, expert = (torch.tensor(x, dtype=torch.int64, device=gate.device)
                          for x in tiles(bounds, rows_per_program))
    count, mask = counts is not None, masks is not None
    lang_ids = lang_ids.contiguous() if count else out
    # Triton reads bool tensors bytewise through a uint8 view; rows of neurons with unit stride.
    masks_u8 = masks.contiguous().view(torch.uint8) if mask else out
    mask_ids = mask_ids.contiguous() if mask else out
    values = values.contiguous() if values is not None else None
    grid = (triton.cdiv(n_neurons, block_i), start.numel())
    _expert_silu_mul_kernel[grid](
        gate, up, out, lang_ids, counts if count else out, start, end, expert, mask_ids, masks_u8,
        values if values is not None else out, n_neurons, counts.shape[1] if count else 0,
        masks.shape[0] if mask else 0,
        gate.stride(0), gate.stride(1), up.stride(0), up.stride(1), out.stride(0),
        *(counts.stride() if count else (0, 0, 0)),
        *(masks_u8.stride()[:2] if mask else (0, 0)), *(values.stride()[:2] if values is not None else (0, 0)),
        COUNT=count, MASK=mask, SET=values is not None, GELU=gelu_flag(activation), LANGS_PAD=langs_pad(counts.shape[1]) if count else 16,
        BLOCK_T=block_t, BLOCK_I=block_i, PRECISE=not INTERPRET and gate.dtype == torch.float32,
        INTERPRET=INTERPRET, num_warps=num_warps,
    )
    return out
