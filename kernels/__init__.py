"""Fused act(gate) * up (SiLU or GELU-tanh) with per-language activation counts and sums, and
per-token neuron interventions (zero or set).

    from lna.kernels import silu_mul, silu_mul_packed
    out = silu_mul(gate, up, lang_ids=g, counts=counts)          # counts[g[t], j] += gate[t, j] > 0
    out = silu_mul(gate, up, lang_ids=g, sums=s, active_sums=a)  # s[g[t], j] += act(gate[t, j]); a: if gate > 0
    out = silu_mul(gate, up, masks=masks, mask_ids=m)             # zero act(gate) where masks[m[t]]
    out = silu_mul(gate, up, masks=masks, mask_ids=m, values=v)   # set it to v[m[t]] there
    out = silu_mul(gate, up, activation="gelu_tanh")              # Gemma's gelu_pytorch_tanh
    out = silu_mul_packed(gate_up, lang_ids=g, counts=counts)    # vLLM's [T, 2I] layout
    silu_mul(gate, up, out=buffer)                                # into a reused buffer (CPU path)

backend=None runs the Triton kernel on CUDA tensors and the vectorised torch path on CPU
tensors; "triton" or "torch" forces one (Triton on CPU needs TRITON_INTERPRET=1 before the
first call). Triton is optional: without it the torch path still works everywhere.
Malformed inputs are programming errors: TypeError (dtype) or ValueError (shape, device,
ids out of range), each one line.
"""
import importlib.util

import torch

from .reference import ACTIVATIONS, activation_native, check_activation, silu_mul_native
from .silu_mul_torch import silu_mul_torch as _silu_mul_torch

__all__ = ["silu_mul", "silu_mul_packed", "silu_mul_native", "activation_native", "triton_available",
           "ACTIVATIONS"]

# What the kernels count and sum (not how fast): bumped when that changes, so that a store
# (meta "kernel", lna.profiling.profile) is never resumed or merged across the change.
VERSION = 1
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ID_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64)
COUNT_DTYPES = (torch.int32, torch.int64)
SUM_DTYPES = (torch.float64, torch.float32)  # float64 recommended (see silu_mul)
BACKENDS = (None, "triton", "torch")


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def silu_mul(gate, up, *, lang_ids=None, counts=None, sums=None, active_sums=None, masks=None, mask_ids=None,
             values=None, activation="silu", backend=None, check_ids=True, nonfinite=None, out=None):
    """act(gate) * up in the input dtype (the activation in fp32, rounded, then the product).

    gate, up [..., I] (strided views welcome, e.g. halves of a packed gate_up);
    activation "silu" (default) or "gelu_tanh" (torch's gelu(approximate="tanh"));
    lang_ids int [...] (-1: not counted) with any of these [n_langs, I] tables, updated in
    place for every counted token t (lang_ids[t] >= 0) and neuron j:
      counts (int32/int64): += 1 where gate[t, j] > 0;
      sums (float64 or float32): += act(gate)[t, j], the raw activation in the input dtype;
      active_sums (float64 or float32): the same where gate[t, j] > 0 only.
    The sums accumulate in fp32 within a call (per program on the GPU: about 8 per neuron
    column and call on an H200), then each partial goes into the table. Use float64 for a
    table summed over many calls (the store's): adding fp32 partials to it is exact, so in
    any order, while the entry stays below 2**29 times the smallest partial, so it neither
    drifts nor depends on the order of the GPU's atomics. A float32 table rounds at every
    partial, in the order the atomics land.
    Uncounted tokens never reach the sums; a counted token with a non-finite activation (an
    overflowed model) makes that neuron's sums non-finite: its own language's where the ids
    come in runs of one language on CPU (as the reference), every language's otherwise
    (one-hot matmuls).
    masks bool [n_masks, I] with mask_ids int [...] (-1: none), and values
    float32 [n_masks, I] or None: where masks[mask_ids[t], j], the activation becomes
    values[mask_ids[t], j] rounded to the dtype (0 when values is None) before the product;
    a mask row without True leaves its tokens bit for bit unchanged. Counting and sums
    always see the raw gate and activation. check_ids=False skips the range check of the
    ids (a device sync on CUDA); the Triton kernel then ignores out-of-range ids instead of
    failing. nonfinite (int32 [1], with lang_ids) becomes nonzero where a counted token's
    gate is NaN or +-Inf (an overflowed model, whose counts would be wrong), found in the
    pass that counts (no sync: the caller reads it when it reads the counts). Returns a new
    contiguous tensor shaped like gate, or out (a contiguous tensor shaped like gate, in its
    dtype and on its device, sharing memory with neither gate nor up), written with the same
    values: on CPU a buffer reused across calls spares the page faults of a fresh
    allocation each call (glibc maps every block over 32 MiB anew).
    """
    _check_inputs(gate, up, lang_ids, counts, sums, active_sums, masks, mask_ids, values, activation, backend)
    if out is not None:
        _check_out(out, gate, up)
    if nonfinite is not None:
        if lang_ids is None:
            raise ValueError("silu_mul: nonfinite flags counted tokens: pass lang_ids and a table with it")
        if not isinstance(nonfinite, torch.Tensor) or nonfinite.dtype != torch.int32 or nonfinite.shape != (1,):
            raise TypeError(f"silu_mul: nonfinite must be an int32 tensor [1], got {getattr(nonfinite, 'dtype', nonfinite)}")
        _same_device("nonfinite", nonfinite, gate.device)
    lead, width = gate.shape[:-1], gate.shape[-1]
    gate, up = gate.reshape(lead.numel(), width), up.reshape(lead.numel(), width)
    if lang_ids is not None:
        lang_ids = lang_ids.reshape(-1)
    if mask_ids is not None:
        mask_ids = mask_ids.reshape(-1)
    if check_ids and not _capturing(gate):
        if lang_ids is not None:
            n_langs = next(t.shape[0] for t in (counts, sums, active_sums) if t is not None)
            _check_range("lang_ids", lang_ids, n_langs, "the tables' rows (languages)")
        if mask_ids is not None:
            _check_range("mask_ids", mask_ids, masks.shape[0], "masks.shape[0] (masks)")

    extra = dict(sums=sums, active_sums=active_sums, values=values, activation=activation, nonfinite=nonfinite)
    if out is not None:
        extra["out"] = out.view(gate.shape)
    if _pick_backend(gate, backend) == "triton":
        from .silu_mul_triton import silu_mul_triton

        out = silu_mul_triton(gate, up, lang_ids, counts, masks, mask_ids, **extra)
    else:
        out = _silu_mul_torch(gate, up, lang_ids, counts, masks, mask_ids, **extra)
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


def _check_out(out, gate, up):
    if not isinstance(out, torch.Tensor) or out.dtype != gate.dtype:
        raise TypeError(f"silu_mul: out must be a {gate.dtype} tensor shaped like gate, "
                        f"got {getattr(out, 'dtype', type(out).__name__)}")
    if out.shape != gate.shape or not out.is_contiguous():
        raise ValueError(f"silu_mul: out must be a contiguous tensor shaped like gate {tuple(gate.shape)}, "
                         f"got {tuple(out.shape)}{'' if out.is_contiguous() else ' (not contiguous)'}")
    _same_device("out", out, gate.device)
    for name, t in (("gate", gate), ("up", up)):  # counting reads gate after the activation is written
        if out.untyped_storage().data_ptr() == t.untyped_storage().data_ptr():
            raise ValueError(f"silu_mul: out must not share memory with {name}; pass a separate buffer")


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


def _check_inputs(gate, up, lang_ids, counts, sums, active_sums, masks, mask_ids, values, activation, backend):
    if backend not in BACKENDS:
        raise ValueError(f"silu_mul: backend must be None, 'triton' or 'torch', got {backend!r}")
    check_activation(activation)
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

    tables = {"counts": counts, "sums": sums, "active_sums": active_sums}
    given = [name for name, t in tables.items() if t is not None]
    if (lang_ids is None) != (not given):
        raise ValueError("silu_mul: lang_ids and the per-language tables (counts, sums, active_sums) go "
                         "together: pass lang_ids with at least one table, or neither")
    if lang_ids is not None:
        _check_ids("lang_ids", lang_ids, lead, device)
        for name in given:
            dtypes, kind = ((COUNT_DTYPES, "an int32 or int64") if name == "counts"
                            else (SUM_DTYPES, "a float64 or float32"))
            _check_table(name, tables[name], dtypes, kind, "n_langs", width, device)
        rows = {name: tables[name].shape[0] for name in given}
        if len(set(rows.values())) > 1:
            raise ValueError(f"silu_mul: counts, sums and active_sums need one row per language each, "
                             f"got {rows} rows")

    if (masks is None) != (mask_ids is None):
        raise ValueError("silu_mul: masks and mask_ids go together: pass both to mask, or neither")
    if masks is not None:
        _check_ids("mask_ids", mask_ids, lead, device)
        _check_table("masks", masks, (torch.bool,), "a bool", "n_masks", width, device)
    if values is not None:
        if masks is None:
            raise ValueError("silu_mul: values set the masked neurons: pass masks and mask_ids with values")
        _check_table("values", values, (torch.float32,), "a float32", "n_masks", width, device)
        if values.shape[0] != masks.shape[0]:
            raise ValueError(f"silu_mul: values needs one row per mask, [{masks.shape[0]}, {width}], "
                             f"got {tuple(values.shape)}")


def _check_table(name, t, dtypes, kind, rows, width, device):
    """A [rows, I] table (counts, sums, masks, values) of one of `dtypes` on gate's device."""
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
