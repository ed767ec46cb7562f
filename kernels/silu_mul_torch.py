"""act(gate) * up with counting, activation sums and interventions in vectorised torch (the
CPU path).

Same function as reference.silu_mul_native, without Python loops over tokens or neurons.
The output is computed as the reference computes it (the activation in torch, then the
product in the input dtype), so the two agree bit for bit.

Counting is a matmul, over blocks of tokens small enough that a block's 0/1 mask (or its
fp32 activations) stays in cache between the pass that writes it and the matmul that reads
it. Where the ids come in runs of one language (lna's packed rows: a row's prompt, then its
responses, all of one language), each run's blocks are summed by ones[1, n] @ mask[n, I]
into that language's row alone, and uncounted runs (prompts) are never touched: no pass
over prompt tokens, no work for the other languages. Where the ids interleave, one_hot[lang,
t] @ mask[t, I] sums every language at once. Activation sums are the same products with
act(gate) (in fp32: exact products of 0/1 and a 16-bit or fp32 value) in the same loop.
The float32 accumulators hold exact integers below 2**24 per cell; they are emptied into
the caller's integer table before they could get there.
"""
from contextlib import contextmanager

import torch

from .reference import activation_native

BLOCK_ELEMENTS = 2**20  # 4 MiB of float32 per block (interleaved ids)
RUN_BLOCK_ELEMENTS = 2**17  # 512 KiB of float32 per block of a run: it stays in L2 between its passes
MIN_RUN_TOKENS = 16  # runs this long on average, or the one-hot path (a Python step per run)
EXACT_LIMIT = 2**24  # float32 holds every integer below this exactly


def silu_mul_torch(gate, up, lang_ids=None, counts=None, masks=None, mask_ids=None, *,
                   sums=None, active_sums=None, values=None, activation="silu", nonfinite=None, out=None):
    act = activation_native(gate, activation) if out is None else _activation_into(gate, activation, out)
    if counts is not None or sums is not None or active_sums is not None:
        with _one_thread(gate):
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


def _activation_into(gate, activation, out):
    """activation_native(gate) written into out (the same aten kernel, so the same values)."""
    if activation == "silu":
        return torch.ops.aten.silu.out(gate, out=out)
    return torch.ops.aten.gelu.out(gate, approximate="tanh", out=out)


def _accumulate(gate, act, lang_ids, counts, sums, active_sums, nonfinite=None):
    """Per language l and neuron j, over tokens t with lang_ids[t] == l:
    counts += #(gate > 0), sums += sum of act, active_sums += sum of act where gate > 0.
    Float sums accumulate in fp32 over the whole call, then go into the caller's table.
    nonfinite (int32 [1]) becomes nonzero where a counted token's gate is NaN or +-Inf: read
    off the fp32 sums where they are taken (act is non-finite with its gate, and a sum with
    it), else from the block in cache (x - x is 0 for finite x only)."""
    n_tokens, width = gate.shape
    if n_tokens == 0 or width == 0:
        return
    runs = _runs(lang_ids)
    if runs is not None:
        return _accumulate_runs(gate, act, runs, counts, sums, active_sums, nonfinite)
    counted = lang_ids >= 0
    if not counted.any():
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
    _flush((counts, sums, active_sums), (acc_counts, acc_sums, acc_active), nonfinite)


def _flush(tables, accs, nonfinite) -> None:
    """The end of both accumulations: the fp32 accumulators (counts, sums, active sums) added
    to their tables, and, where the sums were accumulated, a non-finite activation of a counted
    row read from them once (it spoils them: x - x is 0 for finite x only)."""
    counts, sums, _ = tables
    _, acc_sums, acc_active = accs
    if nonfinite is not None and (sums is not None or counts is None):
        spoiled = acc_sums if acc_sums is not None else acc_active
        nonfinite.bitwise_or_((spoiled - spoiled).ne(0).any().to(nonfinite.dtype))
    for table, acc in zip(tables, accs):
        if table is not None:
            table += acc.to(table.dtype)


@contextmanager
def _one_thread(gate):
    """Counting on CPU in one torch thread: its blocks are cache-sized, and splitting each
    across threads costs a barrier per op, where a thread descheduled by other work on a
    shared machine stalls the rest (measured: the count's share of a forward fell from ~20%
    to ~1% on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    if gate.device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _runs(lang_ids):
    """[(start, stop, lang)] of the maximal runs of one counted language (uncounted runs
    left out), or None where the ids interleave (runs shorter than MIN_RUN_TOKENS on
    average) or live on a GPU (reading them back would sync every layer)."""
    if lang_ids.device.type != "cpu":
        return None
    n = lang_ids.numel()
    cuts = torch.nonzero(lang_ids[1:] != lang_ids[:-1]).flatten() + 1
    if (cuts.numel() + 1) * MIN_RUN_TOKENS > n:
        return None
    starts = [0] + cuts.tolist()
    stops = starts[1:] + [n]
    return [(a, b, k) for a, b, k in zip(starts, stops, lang_ids[starts].tolist()) if k >= 0]


def _accumulate_runs(gate, act, runs, counts, sums, active_sums, nonfinite=None):
    """_accumulate where the counted tokens come in runs of one language: each block of a
    run adds ones[1, n] @ block into its language's row of an fp32 accumulator. nonfinite as
    in _accumulate (every row of a run is counted), where the sums do not show it from a
    float64 total of the counted gates, added block by block while the block is in cache: a
    sum of finite fp32 values cannot overflow float64, NaN and Inf stay in it (one read, where
    g - g != 0 wrote a temporary and read it twice)."""
    if not runs:
        return
    width = gate.shape[1]
    rows = max(8, min(max(b - a for a, b, _ in runs), RUN_BLOCK_ELEMENTS // width))
    ones = torch.ones(1, rows)
    fp32 = act.dtype == torch.float32
    mask = torch.empty(rows, width) if counts is not None else None
    wide = torch.empty(rows, width) if (sums is not None or active_sums is not None) and not fp32 else None
    positive = torch.empty(rows, width) if active_sums is not None else None
    tables = [t for t in (counts, sums, active_sums) if t is not None]
    acc_counts, acc_sums, acc_active = (torch.zeros(tables[0].shape) if t is not None else None
                                        for t in (counts, sums, active_sums))
    in_acc = 0  # rows summed into acc_counts since it was last emptied
    flag = nonfinite is not None and sums is None and counts is not None
    total = torch.zeros((), dtype=torch.float64) if flag else None
    for start, stop, lang in runs:
        for a in range(start, stop, rows):
            b = min(a + rows, stop)
            n = b - a
            weights = ones[:, :n]
            if counts is not None:
                if in_acc + n >= EXACT_LIMIT:
                    counts += acc_counts.to(counts.dtype)
                    acc_counts.zero_()
                    in_acc = 0
                acc_counts[lang:lang + 1].addmm_(weights, torch.gt(gate[a:b], 0, out=mask[:n]))
                in_acc += n
                if total is not None:
                    total += gate[a:b].sum(dtype=torch.float64)
            if acc_sums is not None or acc_active is not None:
                block = act[a:b] if fp32 else wide[:n].copy_(act[a:b])
                if acc_sums is not None:
                    acc_sums[lang:lang + 1].addmm_(weights, block)
                if acc_active is not None:
                    # act has the sign of gate (and is 0 with it): its positive part is act where gate > 0.
                    acc_active[lang:lang + 1].addmm_(weights, torch.clamp_min(block, 0, out=positive[:n]))
    if total is not None:
        nonfinite.bitwise_or_(total.isfinite().logical_not().to(nonfinite.dtype))
    _flush((counts, sums, active_sums), (acc_counts, acc_sums, acc_active), nonfinite)
