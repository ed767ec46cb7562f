"""Expert-segmented counting for mixture-of-experts MLPs (lna.runners.moe).

A MoE layer computes its routed (token, expert) pairs in one buffer sorted by expert, as
transformers' grouped path and vLLM's fused MoE do: rows offsets[e]:offsets[e+1] belong to
expert e. One call computes act(gate) * up over the whole buffer and counts, per expert,
language and neuron, the rows with gate > 0:

    from lna.kernels.expert_count import expert_silu_mul, routed_counts
    out = expert_silu_mul(gate, up, offsets, lang_ids=g, counts=c)  # c[e, g[r], j] += gate[r, j] > 0
    routed_counts(expert_ids, g, routed)                             # routed[e, g] += 1 per pair

counts [E, n_langs, I] is indexed as (expert * n_langs + language) rows of neurons: the
Triton kernel gives each program rows of one expert only (tiles never cross a segment), so
its per-language accumulators stay [n_langs, BLOCK_I] and it adds them to that expert's
rows; the torch path counts each segment with silu_mul_torch's one-hot matmul. Routing
weights scale a pair's output after the activation, never the gate, so the counts are
those of the model's own computation. Malformed inputs: TypeError / ValueError, one line.
"""
import torch

from . import COUNT_DTYPES, FLOAT_DTYPES, ID_DTYPES, _pick_backend
from .reference import activation_native, check_activation
from .silu_mul_torch import _accumulate


def expert_silu_mul(gate, up, offsets, *, lang_ids=None, counts=None, masks=None, mask_ids=None, values=None,
                    activation="silu", backend=None):
    """act(gate) * up in the input dtype over rows grouped by expert, counting gate > 0, and
    per-row interventions on expert neurons.

    gate, up [S, I] (strided views welcome: halves of a packed gate_up); offsets: E + 1
    non-decreasing ints from 0 to S (a list or a CPU tensor; rows offsets[e]:offsets[e+1]
    are expert e's); lang_ids int [S] (-1: not counted) with counts int32/int64
    [E, n_langs, I], updated in place. masks bool [n_masks, E, I] with mask_ids int [S]
    (-1: none), and values float32 [n_masks, E, I] or None: where masks[mask_ids[r], e, j]
    for row r of expert e, act becomes values[mask_ids[r], e, j] rounded to the dtype (0
    without values) before the product; counting sees the raw gate. A whole expert is
    ablated by masking all its neurons (its output is then 0: the families lna counts have
    no expert biases). Returns a new contiguous [S, I] tensor.
    """
    bounds = _check(gate, up, offsets, lang_ids, counts, activation)
    _check_masks(gate, len(bounds) - 1, masks, mask_ids, values)
    if _pick_backend(gate, backend) == "triton":
        from .expert_count_triton import expert_silu_mul_triton

        return expert_silu_mul_triton(gate, up, bounds, lang_ids, counts, masks, mask_ids, values,
                                      activation=activation)
    act = activation_native(gate, activation)
    for e in range(len(bounds) - 1):
        a, b = bounds[e], bounds[e + 1]
        if b == a:
            continue
        if counts is not None:
            _accumulate(gate[a:b], act[a:b], lang_ids[a:b], counts[e], None, None)
        if masks is not None:
            ids = mask_ids[a:b]
            picked = ids.clamp(min=0)
            chosen = masks[:, e][picked] & (ids >= 0).unsqueeze(1)
            if values is None:
                act[a:b].masked_fill_(chosen, 0)
            else:
                act[a:b] = torch.where(chosen, values[:, e].to(act.dtype)[picked], act[a:b])
    return act.mul_(up)


def routed_counts(expert_ids, lang_ids, routed) -> None:
    """routed[e, l] += the pairs (token of language l >= 0, expert e); expert_ids and
    lang_ids int [S] (one entry per pair), routed int64 [E, n_langs], in place."""
    E, K = routed.shape
    keep = lang_ids >= 0
    flat = expert_ids[keep].long() * K + lang_ids[keep].long()
    routed += torch.bincount(flat, minlength=E * K).view(E, K).to(routed.dtype)


def expert_offsets(expert_ids, n_experts: int):
    """(order, offsets) of pairs with these expert ids: `order` sorts them by expert (stable:
    within an expert, in pair order), offsets the E + 1 segment bounds as a list (one
    host sync)."""
    order = torch.argsort(expert_ids, stable=True)
    sizes = torch.bincount(expert_ids, minlength=n_experts)
    return order, [0] + torch.cumsum(sizes, 0).tolist()


def _check_masks(gate, n_experts, masks, mask_ids, values):
    if (masks is None) != (mask_ids is None) or (values is not None and masks is None):
        raise ValueError("expert_silu_mul: masks and mask_ids go together (values only with them)")
    if masks is None:
        return
    width = gate.shape[1]
    if not isinstance(masks, torch.Tensor) or masks.dtype != torch.bool or masks.dim() != 3 \
            or tuple(masks.shape[1:]) != (n_experts, width):
        raise ValueError(f"expert_silu_mul: masks must be a bool tensor [n_masks, {n_experts}, {width}], "
                         f"got {getattr(masks, 'dtype', type(masks).__name__)} {tuple(getattr(masks, 'shape', ()))}")
    if not isinstance(mask_ids, torch.Tensor) or mask_ids.dtype not in ID_DTYPES \
            or tuple(mask_ids.shape) != (gate.shape[0],):
        raise ValueError(f"expert_silu_mul: mask_ids must be a signed integer tensor [{gate.shape[0]}] (one per row)")
    if values is not None and (not isinstance(values, torch.Tensor) or values.dtype != torch.float32
                               or values.shape != masks.shape):
        raise ValueError(f"expert_silu_mul: values must be a float32 tensor shaped like masks {tuple(masks.shape)}")
    for name, t in (("masks", masks), ("mask_ids", mask_ids), ("values", values)):
        if t is not None and t.device != gate.device:
            raise ValueError(f"expert_silu_mul: {name} is on {t.device} but gate is on {gate.device}; "
                             "move them to one device")


def _check(gate, up, offsets, lang_ids, counts, activation):
    check_activation(activation)
    for name, t in (("gate", gate), ("up", up)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"expert_silu_mul: {name} must be a torch.Tensor, got {type(t).__name__}")
    if gate.dim() != 2 or gate.shape != up.shape:
        raise ValueError(f"expert_silu_mul: gate and up must be [S, I] of one shape, "
                         f"got {tuple(gate.shape)} and {tuple(up.shape)}")
    if gate.dtype not in FLOAT_DTYPES or up.dtype != gate.dtype or up.device != gate.device:
        raise TypeError(f"expert_silu_mul: gate and up must share a float32/float16/bfloat16 dtype and a device, "
                        f"got {gate.dtype} on {gate.device} and {up.dtype} on {up.device}")
    bounds = [int(x) for x in (offsets.tolist() if isinstance(offsets, torch.Tensor) else offsets)]
    if (len(bounds) < 2 or bounds[0] != 0 or bounds[-1] != gate.shape[0]
            or any(b < a for a, b in zip(bounds, bounds[1:]))):
        raise ValueError(f"expert_silu_mul: offsets must run non-decreasing from 0 to S={gate.shape[0]} "
                         f"(E + 1 entries), got {bounds[:4]}{'...' if len(bounds) > 4 else ''}")
    if (lang_ids is None) != (counts is None):
        raise ValueError("expert_silu_mul: lang_ids and counts go together: pass both to count, or neither")
    if counts is not None:
        E, width = len(bounds) - 1, gate.shape[1]
        if not isinstance(counts, torch.Tensor) or counts.dtype not in COUNT_DTYPES:
            raise TypeError(f"expert_silu_mul: counts must be an int32 or int64 tensor [E, n_langs, I], "
                            f"got {getattr(counts, 'dtype', type(counts).__name__)}")
        if counts.dim() != 3 or counts.shape[0] != E or counts.shape[2] != width:
            raise ValueError(f"expert_silu_mul: counts must be [{E}, n_langs, {width}] (E from offsets, "
                             f"I = gate.shape[1]), got {tuple(counts.shape)}")
        if not isinstance(lang_ids, torch.Tensor) or lang_ids.dtype not in ID_DTYPES:
            raise TypeError(f"expert_silu_mul: lang_ids must be a signed integer tensor, "
                            f"got {getattr(lang_ids, 'dtype', type(lang_ids).__name__)}")
        if tuple(lang_ids.shape) != (gate.shape[0],):
            raise ValueError(f"expert_silu_mul: lang_ids must have one entry per row, [{gate.shape[0]}], "
                             f"got {tuple(lang_ids.shape)}")
        for name, t in (("counts", counts), ("lang_ids", lang_ids)):
            if t.device != gate.device:
                raise ValueError(f"expert_silu_mul: {name} is on {t.device} but gate is on {gate.device}; "
                                 "move them to one device")
    return bounds
