"""GEMM-epilogue variant (GPU stretch goal): act(x @ W_gate^T) * (x @ W_up^T) with the
per-language counts, masks and interventions of silu_mul in the epilogue, so the [T, 2I]
gate_up intermediate never reaches memory.

Each program computes a [BLOCK_M tokens, BLOCK_N neurons] tile of both the gate and the up
projection (two accumulators over the same x tile), rounds them to the input dtype as a
separate matmul would, and hands them to the same tile functions as silu_mul, so the
activation (SiLU or GELU-tanh) and the interventions (zero or set) come at no extra cost.
The gate comes from a different summation order than cuBLAS's, so gates within rounding
error of zero may change sign: counts agree with the unfused path except there (its test
bounds those flips), and the output obeys the dtype rule.

Activation sums (sums=, active_sums=) are refused: each gate differs from the unfused
path's by its rounding, which a sum over tokens accumulates, so they would need a
tolerance of their own, and per 128-token tile they would cost two more accumulators and
atomics per neuron. Statistics are a profiling feature; silu_mul computes them.

Kept only if it beats cuBLAS + silu_mul on the GPU (benches/bench_gpu_silu_mul.py measures both).
"""
import torch
import triton
import triton.language as tl

from .reference import silu_mul_native
from .triton_tiles import (INTERPRET, _activation, _add_table, _count_tile, _intervene_mul, _languages, _round,
                           _to32, gelu_flag, langs_pad, unit_stride)


@triton.jit
def _gemm_silu_mul_kernel(
    x_ptr, wg_ptr, wu_ptr, out_ptr,
    lang_ptr, counts_ptr, mask_id_ptr, masks_ptr, values_ptr,
    n_tokens, n_neurons, hidden, n_langs, n_masks,
    stride_xt, stride_xk, stride_wgn, stride_wgk, stride_wun, stride_wuk, stride_ot,
    stride_cl, stride_ci, stride_mm, stride_vm,
    COUNT: tl.constexpr, MASK: tl.constexpr, SET: tl.constexpr, GELU: tl.constexpr, LANGS_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    DOT_PRECISION: tl.constexpr, PRECISE: tl.constexpr, INTERPRET: tl.constexpr,
):
    # Grouped order: GROUP_M row blocks sweep the columns together, so W tiles are reused from L2.
    pid = tl.program_id(0)
    n_m, n_n = tl.cdiv(n_tokens, BLOCK_M), tl.cdiv(n_neurons, BLOCK_N)
    group = pid // (GROUP_M * n_n)
    first_m = group * GROUP_M
    group_size = tl.minimum(n_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * n_n)) % group_size
    pid_n = (pid % (GROUP_M * n_n)) // group_size

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok, col_ok = rows < n_tokens, cols < n_neurons
    rows64, cols64 = rows.to(tl.int64), cols.to(tl.int64)
    ks = tl.arange(0, BLOCK_K)
    acc_gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, hidden, BLOCK_K):
        k = k0 + ks
        k_ok = k < hidden
        x = tl.load(x_ptr + rows64[:, None] * stride_xt + k[None, :] * stride_xk,
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w_ok = k_ok[:, None] & col_ok[None, :]
        wg = tl.load(wg_ptr + k[:, None] * stride_wgk + cols64[None, :] * stride_wgn, mask=w_ok, other=0.0)
        wu = tl.load(wu_ptr + k[:, None] * stride_wuk + cols64[None, :] * stride_wun, mask=w_ok, other=0.0)
        if INTERPRET:  # the interpreter multiplies bf16 as raw bits: give it fp32
            x, wg, wu = _to32(x, INTERPRET), _to32(wg, INTERPRET), _to32(wu, INTERPRET)
        acc_gate = tl.dot(x, wg, acc_gate, input_precision=DOT_PRECISION)
        acc_up = tl.dot(x, wu, acc_up, input_precision=DOT_PRECISION)

    dtype = out_ptr.dtype.element_ty
    gate = _round(acc_gate, dtype, INTERPRET)  # what the gate projection would have stored
    up = _round(acc_up, dtype, INTERPRET)
    g32, up32 = _to32(gate, INTERPRET), _to32(up, INTERPRET)
    act32 = _to32(_activation(g32, dtype, GELU, PRECISE, INTERPRET), INTERPRET)
    out = _intervene_mul(act32, up32, dtype, rows, row_ok, cols, col_ok, mask_id_ptr, masks_ptr, values_ptr, n_masks,
                         stride_mm, stride_vm, MASK, SET, INTERPRET)
    tl.store(out_ptr + rows64[:, None] * stride_ot + cols[None, :], out,
             mask=row_ok[:, None] & col_ok[None, :])
    if COUNT:
        hit, _ = _languages(lang_ptr, rows, row_ok, n_langs, LANGS_PAD)
        acc = _count_tile(tl.zeros((LANGS_PAD, BLOCK_N), dtype=tl.float32), hit, g32 > 0)
        _add_table(acc, counts_ptr, cols, col_ok, n_langs, stride_cl, stride_ci, LANGS_PAD)


def default_config(device):
    """(block_m, block_n, block_k, group_m, num_warps, num_stages)."""
    if INTERPRET or device.type != "cuda":
        return 32, 64, 32, 4, 4, 1
    return 128, 128, 64, 8, 8, 3


def gemm_silu_mul(x, w_gate, w_up, lang_ids=None, counts=None, masks=None, mask_ids=None, *,
                  sums=None, active_sums=None, values=None, activation="silu", config=None):
    """act(x @ w_gate.T) * (x @ w_up.T) with silu_mul's counting and interventions.

    x [T, H]; w_gate, w_up [I, H] (nn.Linear weights, or the halves of a packed [2I, H]
    gate_up weight); the other arguments as lna.kernels.silu_mul (checked by the caller),
    except sums and active_sums, which this variant refuses (see the module's note).
    """
    if sums is not None or active_sums is not None:
        raise ValueError("gemm_silu_mul: activation sums (sums=, active_sums=) are not computed by the "
                         "GEMM-epilogue variant; compute the projections and call lna.kernels.silu_mul")
    gelu = gelu_flag(activation)
    if x.dim() != 2 or w_gate.dim() != 2 or w_gate.shape != w_up.shape or x.shape[1] != w_gate.shape[1]:
        raise ValueError(f"gemm_silu_mul: need x [T, H] and weights [I, H], got {tuple(x.shape)}, "
                         f"{tuple(w_gate.shape)} and {tuple(w_up.shape)}")
    if not (x.dtype == w_gate.dtype == w_up.dtype) or x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"gemm_silu_mul: x and weights must share one float dtype, got {x.dtype}, "
                        f"{w_gate.dtype}, {w_up.dtype}")
    if x.device.type == "cpu" and not INTERPRET:
        raise RuntimeError("gemm_silu_mul on CPU tensors needs TRITON_INTERPRET=1 (it is a GPU kernel)")
    n_tokens, hidden = x.shape
    n_neurons = w_gate.shape[0]
    out = torch.empty((n_tokens, n_neurons), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    block_m, block_n, block_k, group_m, num_warps, num_stages = config or default_config(x.device)
    count, mask = counts is not None, masks is not None
    dummy = out
    lang_ids = lang_ids.contiguous() if count else dummy
    mask_ids = mask_ids.contiguous() if mask else dummy
    masks_u8 = unit_stride(masks).view(torch.uint8) if mask else dummy
    set_values = mask and values is not None
    values = unit_stride(values) if set_values else dummy
    grid = (triton.cdiv(n_tokens, block_m) * triton.cdiv(n_neurons, block_n),)
    _gemm_silu_mul_kernel[grid](
        x, w_gate, w_up, out,
        lang_ids, counts if count else dummy, mask_ids, masks_u8, values,
        n_tokens, n_neurons, hidden, counts.shape[0] if count else 0, masks.shape[0] if mask else 0,
        x.stride(0), x.stride(1), w_gate.stride(0), w_gate.stride(1), w_up.stride(0), w_up.stride(1),
        out.stride(0),
        counts.stride(0) if count else 0, counts.stride(1) if count else 0,
        masks_u8.stride(0) if mask else 0, values.stride(0) if set_values else 0,
        COUNT=count, MASK=mask, SET=set_values, GELU=gelu,
        LANGS_PAD=langs_pad(counts.shape[0]) if count else 16,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=group_m,
        DOT_PRECISION="ieee" if x.dtype == torch.float32 else None,  # fp32 as cuBLAS: no tf32
        PRECISE=not INTERPRET and x.dtype == torch.float32, INTERPRET=INTERPRET,
        num_warps=num_warps, num_stages=num_stages,
    )
    return out


def gemm_silu_mul_native(x, w_gate, w_up, lang_ids=None, counts=None, masks=None, mask_ids=None, *,
                         values=None, activation="silu"):
    """The unfused reference: two matmuls in the input dtype, then silu_mul_native."""
    return silu_mul_native(x @ w_gate.T, x @ w_up.T, lang_ids, counts, masks, mask_ids,
                           values=values, activation=activation)

