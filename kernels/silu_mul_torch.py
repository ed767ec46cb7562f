"""SiLU(gate) * up with counting and masking in vectorised torch (the CPU path).

Same function as reference.silu_mul_native, without Python loops over tokens or neurons.
The output is computed exactly as the reference (F.silu then the product in the input
dtype), so it is bit-identical to it.
"""
import torch
import torch.nn.functional as F


def silu_mul_torch(gate, up, lang_ids=None, counts=None, masks=None, mask_ids=None):
    act = F.silu(gate)
    if masks is not None:
        # masks[mask_ids[t]] for every token, False for tokens without a mask.
        dropped = masks[mask_ids.clamp(min=0)]
        dropped &= (mask_ids >= 0).unsqueeze(1)
        act.masked_fill_(dropped, 0)
    if counts is not None:
        _count(gate, lang_ids, counts)
    return act.mul_(up)


def _count(gate, lang_ids, counts):
    """counts[lang_ids[t], j] += 1 where gate[t, j] > 0 and lang_ids[t] >= 0."""
    counted = lang_ids >= 0
    ids = lang_ids[counted]
    if ids.numel() == 0:
        return
    active = gate[counted] > 0
    # A one-hot [n_langs, T'] times active [T', I] sums the rows of each language in one
    # matmul; float32 holds every integer below 2**24 exactly, far above any token batch.
    one_hot = F.one_hot(ids.long(), counts.shape[0]).T.to(torch.float32)
    counts += (one_hot @ active.to(torch.float32)).to(counts.dtype)
