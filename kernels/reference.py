"""Plain-torch references of the fused kernels: naive and obviously correct, not fast.

Every kernel in this folder (Triton or the vectorised torch path) is tested against these.
"""
import torch
import torch.nn.functional as F


def silu_mul_native(gate, up, lang_ids=None, counts=None, masks=None, mask_ids=None):
    """SiLU(gate) * up, counting gate > 0 per language and zeroing masked neurons.

    gate, up [T, I]; lang_ids int [T] (-1: not counted); counts int [n_langs, I], updated
    in place; masks bool [n_masks, I]; mask_ids int [T] (-1: no mask). Counting looks at
    the raw gate, masked or not. Returns the output [T, I] in the input dtype.
    """
    act = F.silu(gate)  # fp32 internally, rounded to the input dtype (as LlamaMLP does)
    if masks is not None:
        for t in range(gate.shape[0]):
            if mask_ids[t] >= 0:
                act[t] = torch.where(masks[mask_ids[t]], torch.zeros_like(act[t]), act[t])
    if counts is not None:
        for lang in range(counts.shape[0]):
            rows = lang_ids == lang
            counts[lang] += (gate[rows] > 0).sum(0).to(counts.dtype)
    return act * up
