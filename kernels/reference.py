"""Plain-torch references of the fused kernels: naive and obviously correct, not fast.

Every kernel in this folder (Triton or the vectorised torch path) is tested against these.
"""
import torch
import torch.nn.functional as F

ACTIVATIONS = ("silu", "gelu_tanh")


def check_activation(activation) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"silu_mul: activation must be one of {', '.join(map(repr, ACTIVATIONS))}, "
                         f"got {activation!r}")


def activation_native(gate, activation="silu"):
    """act(gate) in gate's dtype, as the model's MLP computes it: F.silu (LlamaMLP) or
    F.gelu(approximate="tanh") (Gemma's gelu_pytorch_tanh); both run in fp32 internally
    for 16-bit inputs and round once."""
    if activation == "silu":
        return F.silu(gate)
    if activation == "gelu_tanh":
        return F.gelu(gate, approximate="tanh")
    check_activation(activation)


def silu_mul_native(gate, up, lang_ids=None, counts=None, masks=None, mask_ids=None, *,
                    sums=None, active_sums=None, values=None, activation="silu"):
    """act(gate) * up, counting gate > 0 and summing act(gate) per language, with per-token
    interventions on masked neurons.

    gate, up [T, I]; lang_ids int [T] (-1: not counted); counts int [n_langs, I], sums and
    active_sums float [n_langs, I], updated in place: per language, the number of tokens
    with gate > 0, the sum of act(gate) (in the table's dtype) over its tokens, and that sum
    over its tokens with gate > 0. masks bool [n_masks, I]; mask_ids int [T] (-1: none);
    values float32 [n_masks, I] or None: where masks[mask_ids[t], j], act[t, j] becomes
    values[mask_ids[t], j] rounded to the dtype (0 without values) before the product.
    Counting and sums look at the raw gate and activation. Returns [T, I] in the input dtype.
    """
    act = activation_native(gate, activation)
    tables = [t for t in (counts, sums, active_sums) if t is not None]
    for lang in range(tables[0].shape[0] if tables else 0):
        rows = lang_ids == lang
        g, a = gate[rows], act[rows]
        if counts is not None:
            counts[lang] += (g > 0).sum(0).to(counts.dtype)
        if sums is not None:
            sums[lang] += a.to(sums.dtype).sum(0)
        if active_sums is not None:
            active_sums[lang] += torch.where(g > 0, a, torch.zeros_like(a)).to(active_sums.dtype).sum(0)
    if masks is not None:
        for t in range(gate.shape[0]):
            if mask_ids[t] >= 0:
                m = int(mask_ids[t])
                new = torch.zeros_like(act[t]) if values is None else values[m].to(act.dtype)
                act[t] = torch.where(masks[m], new, act[t])
    return act * up


def expert_silu_mul_native(gate, up, offsets, lang_ids=None, counts=None, masks=None, mask_ids=None, *,
                           values=None, activation="silu"):
    """act(gate) * up over rows grouped by expert (rows offsets[e]:offsets[e+1] are expert
    e's), row by row: counts[e, lang_ids[r], j] += gate[r, j] > 0 for the rows with
    lang_ids[r] >= 0 (counts int [E, n_langs, I], in place); where masks[mask_ids[r], e, j]
    (masks bool [n_masks, E, I], mask_ids -1: none), act becomes values[mask_ids[r], e, j]
    rounded to the dtype (0 without values). Returns [S, I]."""
    act = activation_native(gate, activation)
    bounds = [int(x) for x in offsets]
    for e in range(len(bounds) - 1):
        for r in range(bounds[e], bounds[e + 1]):
            if counts is not None and lang_ids[r] >= 0:
                counts[e, int(lang_ids[r])] += (gate[r] > 0).to(counts.dtype)
            if masks is not None and mask_ids[r] >= 0:
                m = int(mask_ids[r])
                new = torch.zeros_like(act[r]) if values is None else values[m, e].to(act.dtype)
                act[r] = torch.where(masks[m, e], new, act[r])
    return act * up
