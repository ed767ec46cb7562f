"""Fused SiLU(gate) * up with per-language activation counts and per-token neuron masks.

    from lna.kernels import silu_mul, silu_mul_packed
    out = silu_mul(gate, up, lang_ids=g, counts=counts)          # counts[g[t], j] += gate[t, j] > 0
    out = silu_mul(gate, up, masks=masks, mask_ids=m)             # zero SiLU(gate) where masks[m[t]]
    out = silu_mul_packed(gate_up, lang_ids=g, counts=counts)    # vLLM's [T, 2I] layout

backend=None runs the Triton kernel on CUDA tensors and the vectorised torch path on CPU
tensors; "triton" or "torch" forces one (Triton on CPU needs TRITON_INTERPRET=1 before the
first call). Triton is optional: without it the torch path still works everywhere.
Malformed inputs are programming errors: TypeError (dtype) or ValueError (shape, device,
ids out of range), each one line.
"""
import importlib.util

import torch

from .reference import silu_mul_native
from .silu_mul_torch import silu_mul_torch as _silu_mul_torch

__all__ = ["silu_mul", "silu_mul_packed", "silu_mul_native", "triton_available"]

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ID_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64)
COUNT_DTYPES = (torch.int32, torch.int64)
BACKENDS = (None, "triton", "torch")


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def silu_mul(gate, up, *, lang_ids=None, counts=None, masks=None, mask_ids=None, backend=None,
             check_ids=True):
    """SiLU(gate) * up in the input dtype (SiLU in fp32, rounded, then the product).

    gate, up [..., I] (strided views welcome, e.g. halves of a packed gate_up);
    lang_ids int [...] (-1: not counted) with counts int32/int64 [n_langs, I], updated in
    place: counts[lang_ids[t], j] += 1 for every counted token t with gate[t, j] > 0;
    masks bool [n_masks, I] with mask_ids int [...] (-1: no mask): the activation of
    neuron j of token t is zeroed where masks[mask_ids[t], j]. Counting always looks at the
    raw gate. check_ids=False skips the range check of the ids (a device sync on CUDA);
    the Triton kernel then ignores out-of-range ids instead of failing.
    Returns a new contiguous tensor shaped like gate.
    """
    _check_inputs(gate, up, lang_ids, counts, masks, mask_ids, backend)
    lead, width = gate.shape[:-1], gate.shape[-1]
    gate, up = gate.reshape(lead.numel(), width), up.reshape(lead.numel(), width)
    if lang_ids is not None:
        lang_ids = lang_ids.reshape(-1)
    if mask_ids is not None:
        mask_ids = mask_ids.reshape(-1)
    if check_ids and not _capturing(gate):
        if lang_ids is not None:
            _check_range("lang_ids", lang_ids, counts.shape[0], "counts.shape[0] (languages)")
        if mask_ids is not None:
            _check_range("mask_ids", mask_ids, masks.shape[0], "masks.shape[0] (masks)")

    if _pick_backend(gate, backend) == "triton":
        from .silu_mul_triton import silu_mul_triton

        out = silu_mul_triton(gate, up, lang_ids, counts, masks, mask_ids)
    else:
        out = _silu_mul_torch(gate, up, lang_ids, counts, masks, mask_ids)
    return out.reshape(*lead, width)


def silu_mul_packed(gate_up, **kwargs):
    """silu_mul on vLLM's packed layout: gate_up [..., 2I] holds gate then up (no copy)."""
    if not isinstance(gate_up, torch.Tensor) or gate_up.dim() < 1 or gate_up.shape[-1] % 2:
        shape = tuple(gate_up.shape) if isinstance(gate_up, torch.Tensor) else type(gate_up).__name__
        raise ValueError(f"silu_mul_packed: gate_up must be a tensor [..., 2*I] (gate then up), got {shape}")
    half = gate_up.shape[-1] // 2
    return silu_mul(gate_up[..., :half], gate_up[..., half:], **kwargs)


def _pick_backend(gate, backend):
    if backend == "torch":
        return "torch"
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("silu_mul: backend='triton' but the triton package is not installed; "
                               "install triton (Linux) or use backend='torch'")
        return "triton"
    return "triton" if gate.is_cuda and triton_available() else "torch"


def _capturing(t):
    # A range check reads the ids back to the host, which a CUDA graph capture forbids.
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


def _check_range(name, ids, n, what):
    if ids.numel() == 0:
        return
    lo, hi = torch.aminmax(ids)
    lo, hi = int(lo), int(hi)
    if lo < -1 or hi >= n:
        raise ValueError(f"silu_mul: {name} must lie in [-1, {n}) for {what}={n}, "
                         f"got values in [{lo}, {hi}]")


def _check_inputs(gate, up, lang_ids, counts, masks, mask_ids, backend):
    if backend not in BACKENDS:
        raise ValueError(f"silu_mul: backend must be None, 'triton' or 'torch', got {backend!r}")
    for name, t in (("gate", gate), ("up", up)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"silu_mul: {name} must be a torch.Tensor, got {type(t).__name__}")
    if gate.dim() < 1 or gate.shape != up.shape:
        raise ValueError(f"silu_mul: gate and up must have the same shape [..., I], "
                         f"got {tuple(gate.shape)} and {tuple(up.shape)}")
    if gate.dtype not in FLOAT_DTYPES or up.dtype != gate.dtype:
        raise TypeError(f"silu_mul: gate and up must share one dtype of float32/float16/bfloat16, "
                        f"got {gate.dtype} and {up.dtype}")
    device, lead, width = gate.device, tuple(gate.shape[:-1]), gate.shape[-1]
    _same_device("up", up, device)

    if (lang_ids is None) != (counts is None):
        raise ValueError("silu_mul: lang_ids and counts go together: pass both to count, or neither")
    if counts is not None:
        _check_ids("lang_ids", lang_ids, lead, device)
        _check_table("counts", counts, COUNT_DTYPES, "an int32 or int64", "n_langs", width, device)

    if (masks is None) != (mask_ids is None):
        raise ValueError("silu_mul: masks and mask_ids go together: pass both to mask, or neither")
    if masks is not None:
        _check_ids("mask_ids", mask_ids, lead, device)
        _check_table("masks", masks, (torch.bool,), "a bool", "n_masks", width, device)


def _check_table(name, t, dtypes, kind, rows, width, device):
    """A [rows, I] table (counts or masks) of one of `dtypes` on gate's device."""
    if not isinstance(t, torch.Tensor) or t.dtype not in dtypes:
        raise TypeError(f"silu_mul: {name} must be {kind} tensor [{rows}, I], "
                        f"got {getattr(t, 'dtype', type(t).__name__)}")
    if t.dim() != 2 or t.shape[1] != width:
        raise ValueError(f"silu_mul: {name} must be [{rows}, {width}] (I = gate.shape[-1]), "
                         f"got {tuple(t.shape)}")
    _same_device(name, t, device)


def _check_ids(name, ids, lead, device):
    if not isinstance(ids, torch.Tensor) or ids.dtype not in ID_DTYPES:
        raise TypeError(f"silu_mul: {name} must be a signed integer tensor (int32 or int64), "
                        f"got {getattr(ids, 'dtype', type(ids).__name__)}")
    if tuple(ids.shape) != lead:
        raise ValueError(f"silu_mul: {name} must have one entry per token, shape {lead}, "
                         f"got {tuple(ids.shape)}")
    _same_device(name, ids, device)


def _same_device(name, t, device):
    if t.device != device:
        raise ValueError(f"silu_mul: {name} is on {t.device} but gate is on {device}; "
                         f"move them to one device")
