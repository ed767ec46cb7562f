"""SiLU(gate) * up with counting and masking in vectorised torch (the CPU path).

Same function as reference.silu_mul_native, without Python loops over tokens or neurons.
The output is computed as the reference computes it (F.silu, then the product in the input
dtype), so the two agree bit for bit.

Counting is a matmul: one_hot[lang, t] @ (gate[t, j] > 0) sums the active rows of each
language at once. It runs over blocks of tokens through one small reused buffer: the
comparison writes floats straight into it (no bool tensor, no conversion pass) and the
block stays in cache for the matmul, where a [T, I] temporary would cost a fresh
allocation and two more passes over memory.
"""
import torch
import torch.nn.functional as F

BLOCK_ELEMENTS = 2**20  # 4 MiB of float32 per block
EXACT_LIMIT = 2**24  # float32 holds every integer below this exactly


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
    n_tokens, width = gate.shape
    counted = lang_ids >= 0
    if n_tokens == 0 or width == 0 or not counted.any():
        return
    languages = torch.arange(counts.shape[0], device=gate.device)
    one_hot = (lang_ids[None, :] == languages[:, None]).to(torch.float32)  # [n_langs, T]; -1 matches none
    rows = max(1, min(n_tokens, BLOCK_ELEMENTS // width))
    active = torch.empty(rows, width, dtype=torch.float32, device=gate.device)
    acc = torch.zeros(counts.shape, dtype=torch.float32, device=gate.device)
    in_acc = 0  # rows summed into acc since it was last emptied
    for start in range(0, n_tokens, rows):
        stop = min(start + rows, n_tokens)
        if not counted[start:stop].any():  # e.g. a block of prompt tokens
            continue
        if in_acc + rows >= EXACT_LIMIT:
            counts += acc.to(counts.dtype)
            acc.zero_()
            in_acc = 0
        block = active[: stop - start]
        torch.gt(gate[start:stop], 0, out=block)
        acc.addmm_(one_hot[:, start:stop], block)
        in_acc += stop - start
    counts += acc.to(counts.dtype)
