"""act(gate) * up with counting, activation sums and interventions in vectorised torch (the
CPU path).

Same function as reference.silu_mul_native, without Python loops over tokens or neurons.
The output is computed as the reference computes it (the activation in torch, then the
product in the input dtype), so the two agree bit for bit.

Counting is a matmul: one_hot[lang, t] @ (gate[t, j] > 0) sums the active rows of each
language at once, and the activation sums are the same product with act(gate) (in fp32,
exact products of 0/1 and a 16-bit or fp32 value) in the same loop. It runs over blocks
of tokens through small reused buffers: the comparison writes floats straight into one
(no bool tensor, no conversion pass) and the block stays in cache for the matmuls, where a
[T, I] temporary would cost a fresh allocation and two more passes over memory.
"""
import torch

from .reference import activation_native

BLOCK_ELEMENTS = 2**20  # 4 MiB of float32 per block
EXACT_LIMIT = 2**24  # float32 holds every integer below this exactly


def silu_mul_torch(gate, up, lang_ids=None, counts=None, masks=None, mask_ids=None, *,
                   sums=None, active_sums=None, values=None, activation="silu", nonfinite=None):
    act = activation_native(gate, activation)
    if counts is not None or sums is not None or active_sums is not None:
        _accumulate(gate, act, lang_ids, counts, sums, active_sums, nonfinite)
    if masks is not None:
        # masks[mask_ids[t]] for every token, False for tokens without a mask.
        picked = mask_ids.clamp(min=0)
        chosen = masks[picked]
        chosen &= (mask_ids >= 0).unsqueeze(1)
        if values is None:
            act.masked_fill_(chosen, 0)
        else:
            torch.where(chosen, values.to(act.dtype)[picked], act, out=act)
    return act.mul_(up)


def _accumulate(gate, act, lang_ids, counts, sums, active_sums, nonfinite=None):
    """Per language l and neuron j, over tokens t with lang_ids[t] == l:
    counts += #(gate > 0), sums += sum of act, active_sums += sum of act where gate > 0.
    Float sums accumulate in fp32 over the whole call, then go into the caller's table.
    nonfinite (int32 [1]) becomes nonzero where a counted token's gate is NaN or +-Inf: read
    off the fp32 sums where they are taken (act is non-finite with its gate, and a sum with
    it), else from the block in cache (x - x is 0 for finite x only)."""
    n_tokens, width = gate.shape
    counted = lang_ids >= 0
    if n_tokens == 0 or width == 0 or not counted.any():
        return
    device = gate.device
    tables = [t for t in (counts, sums, active_sums) if t is not None]
    languages = torch.arange(tables[0].shape[0], device=device)
    one_hot = (lang_ids[None, :] == languages[:, None]).to(torch.float32)  # [n_langs, T]; -1 matches none
    rows = max(1, min(n_tokens, BLOCK_ELEMENTS // width))

    def buffer():
        return torch.empty(rows, width, dtype=torch.float32, device=device)

    def accumulator():
        return torch.zeros(tables[0].shape, dtype=torch.float32, device=device)

    active = buffer() if counts is not None else None
    chosen = buffer() if sums is not None or active_sums is not None else None
    acc_counts, acc_sums, acc_active = (accumulator() if t is not None else None
                                        for t in (counts, sums, active_sums))
    in_acc = 0  # rows summed into acc_counts since it was last emptied
    for start in range(0, n_tokens, rows):
        stop = min(start + rows, n_tokens)
        if not counted[start:stop].any():  # e.g. a block of prompt tokens
            continue
        weights, n = one_hot[:, start:stop], stop - start
        if counts is not None:
            if in_acc + rows >= EXACT_LIMIT:
                counts += acc_counts.to(counts.dtype)
                acc_counts.zero_()
                in_acc = 0
            acc_counts.addmm_(weights, torch.gt(gate[start:stop], 0, out=active[:n]))
            in_acc += n
            if nonfinite is not None and sums is None:
                g = gate[start:stop]
                bad = (g - g).ne_(0).any(dim=1).logical_and_(counted[start:stop])
                nonfinite.bitwise_or_(bad.any().to(nonfinite.dtype))
        if chosen is not None:
            # fp32 activations of the counted rows; uncounted rows are zeroed, not only
            # weighted by 0 (0 * inf would be NaN).
            block, skipped = act[start:stop], (~counted[start:stop]).nonzero().squeeze(1)
            if block.dtype != torch.float32 or skipped.numel():
                block = chosen[:n].copy_(block).index_fill_(0, skipped, 0)
            if sums is not None:
                acc_sums.addmm_(weights, block)
            if active_sums is not None:
                # act has the sign of gate (and is 0 with it), so its positive part is act where gate > 0.
                acc_active.addmm_(weights, torch.clamp_min(block, 0, out=chosen[:n]))
    if nonfinite is not None and (sums is not None or counts is None):
        spoiled = acc_sums if acc_sums is not None else acc_active
        nonfinite.bitwise_or_((spoiled - spoiled).ne(0).any().to(nonfinite.dtype))
    for table, acc in ((counts, acc_counts), (sums, acc_sums), (active_sums, acc_active)):
        if table is not None:
            table += acc.to(table.dtype)
