"""Bookkeeping of the vLLM backend that needs neither vLLM nor a GPU.

Three pure pieces, unit-tested on their own (tests/test_vllm_runner.py):
- `Tracker`: given the requests of one scheduled step (which sample each is, where its
  scheduled tokens start, how many), decide the per-token slot (language or mask id) and
  which positions are counted or scored, exactly once per sample, and notice what vLLM
  skipped (a prefix-cache hit over response tokens) or recomputed (preemption).
- `at_risk`: which samples could get a prefix-cache hit that reaches into the positions
  they must compute; those are submitted without reading the cache.
- `gather_ranks`: tensor-parallel ranks each return their slice of the neurons; the
  counts are their concatenation in rank order (never a sum).
"""
from dataclasses import dataclass, field

import numpy as np

# SamplingParams.extra_args key that carries (sample, lo, hi, slot) to the workers.
META_KEY = "lna"
# ... and the key of a generated request's intervention id (generate mode).
GENERATE_KEY = "lna_intervention"


@dataclass
class Step:
    ids: np.ndarray  # int32 [tokens]: slot of each token of the step (-1: none)
    rows: np.ndarray  # int64 [R]: rows whose hidden state scores the next token (nll)
    samples: np.ndarray  # int64 [R]: the sample each scoring row belongs to
    targets: np.ndarray  # int64 [R]: the token each scoring row predicts
    positions: np.ndarray  # int64 [scheduled tokens]: where each token sits in its sequence


@dataclass
class Tracker:
    """Per-call state of one worker: which positions of each sample went through the model.

    mode "count": a sample's window is its response positions [lo, hi); window tokens
    carry the sample's language slot and are counted.
    mode "nll": the window is [lo - 1, hi - 1), the hidden states that predict the
    response tokens; every token of the sample carries its mask slot (the neurons are
    deactivated for the whole sequence) and window rows are scored.
    A position computed again (preemption recomputes from scratch) is not counted twice;
    a window position that never went through the model (a prefix-cache hit) is a gap.
    """
    mode: str
    n_samples: int
    upto: np.ndarray = field(init=False)  # first position not yet computed, per sample
    done: np.ndarray = field(init=False)  # window positions counted or scored, per sample
    recomputed: int = 0  # window positions that went through the model a second time
    reused: int = 0  # positions served from the prefix cache at a sample's first step (shared prompts)
    gaps: list = field(default_factory=list)  # (sample, first, end) never computed

    def __post_init__(self):
        if self.mode not in ("count", "nll"):
            raise ValueError(f"Tracker: mode must be 'count' or 'nll', got {self.mode!r}")
        self.upto = np.zeros(self.n_samples, dtype=np.int64)
        self.done = np.zeros(self.n_samples, dtype=np.int64)

    def window(self, lo: int, hi: int) -> tuple[int, int]:
        return (lo, hi) if self.mode == "count" else (lo - 1, hi - 1)

    def step(self, metas, starts, lens, n_tokens: int, sequences=None) -> Step:
        """metas[i]: (sample, lo, hi, slot) of the i-th request of the step, or None for a
        request that is not ours; starts[i]: position of its first scheduled token;
        lens[i]: its number of scheduled tokens (requests lie back to back in the batch);
        n_tokens: rows of the batch (>= sum(lens), padding is never counted);
        sequences[i]: the request's token ids (nll mode, for the scoring targets)."""
        ids = np.full(n_tokens, -1, dtype=np.int32)
        positions = np.empty(int(np.sum(lens, dtype=np.int64)), dtype=np.int64)
        rows, samples, targets = [], [], []
        row = 0
        for i, meta in enumerate(metas):
            start, n = int(starts[i]), int(lens[i])
            positions[row:row + n] = np.arange(start, start + n)
            if meta is not None:
                sample, lo, hi, slot = (int(v) for v in meta)
                first, end = self.window(lo, hi)
                seen = int(self.upto[sample])
                if seen == 0:
                    self.reused += start
                if start > seen and max(first, seen) < min(end, start):
                    self.gaps.append((sample, max(first, seen), min(end, start)))
                if start < seen:
                    self.recomputed += max(0, min(seen, start + n, end) - max(start, first))
                a, b = max(first, seen, start), min(end, start + n)
                if self.mode == "nll":
                    ids[row:row + n] = slot
                if a < b:
                    if self.mode == "count":
                        ids[row + a - start:row + b - start] = slot
                    else:
                        rows.append(np.arange(row + a - start, row + b - start))
                        samples.append(np.full(b - a, sample))
                        targets.append(np.asarray(sequences[i][a + 1:b + 1], dtype=np.int64))
                    self.done[sample] += b - a
                self.upto[sample] = max(seen, start + n)
            row += n
        if row > n_tokens:
            raise ValueError(f"Tracker.step: {row} scheduled tokens but the batch has {n_tokens} rows")
        cat = (lambda parts: np.concatenate(parts).astype(np.int64)) if rows else (
            lambda parts: np.zeros(0, dtype=np.int64))
        return Step(ids, cat(rows), cat(samples), cat(targets), positions)


def problems(done, gaps, lengths, mode: str, names=None) -> list[str]:
    """What went wrong in a call: response positions never computed, or per-sample totals
    (counted or scored positions, from `Tracker.done`) that differ from the response lengths.
    names[i] names sample i in the messages (default: its index)."""
    name = (lambda s: f"sample #{s}") if names is None else (lambda s: f"sample {names[s]!r}")
    out = []
    for sample, a, b in list(gaps)[:3]:
        out.append(f"{name(sample)}: positions {a}..{b - 1} never went through the model "
                   f"(a prefix-cache hit covered response tokens)")
    if len(gaps) > 3:
        out.append(f"... and {len(gaps) - 3} more such gaps")
    done, lengths = np.asarray(done, dtype=np.int64), np.asarray(lengths, dtype=np.int64)
    wrong = np.flatnonzero(done != lengths)
    for s in wrong[:3]:
        out.append(f"{name(s)}: {done[s]} of {lengths[s]} response tokens "
                   f"{'counted' if mode == 'count' else 'scored'}")
    if len(wrong) > 3:
        out.append(f"... and {len(wrong) - 3} more samples with wrong totals")
    return out


def at_risk(sequences, first_needed, granularity: int, salts=None) -> np.ndarray:
    """bool [n]: sample i could get a prefix-cache hit past position first_needed[i].

    vLLM reuses the KV cache of whole blocks (`granularity` tokens, hits land on
    multiples of it) of another sequence with the same tokens (and the same cache salt).
    Such a hit on sample i ends at most at the block boundary at or below the longest
    common prefix of i with any other sequence; if that boundary lies beyond the first
    position i must compute itself, i is at risk. Sorting puts each sequence next to
    its longest-prefix partners, so neighbours suffice.
    """
    n = len(sequences)
    risk = np.zeros(n, dtype=bool)
    if granularity <= 0:
        raise ValueError(f"at_risk: granularity must be positive, got {granularity}")
    salts = [""] * n if salts is None else list(salts)
    order = sorted(range(n), key=lambda i: (salts[i], tuple(sequences[i])))
    best = np.zeros(n, dtype=np.int64)
    for a, b in zip(order, order[1:]):
        if salts[a] != salts[b]:
            continue
        common = _common_prefix(sequences[a], sequences[b])
        best[a] = max(best[a], common)
        best[b] = max(best[b], common)
    hit = (best // granularity) * granularity
    risk[:] = hit > np.asarray(first_needed, dtype=np.int64)
    return risk


def _common_prefix(a, b) -> int:
    m = min(len(a), len(b))
    x, y = np.asarray(a[:m]), np.asarray(b[:m])
    diff = np.flatnonzero(x != y)
    return int(diff[0]) if diff.size else m


def gather_ranks(outs: list[dict]) -> dict:
    """Merge the per-rank results of a worker call into one.

    Each rank returns {"rank", "world", "counts" (bytes, int64 [layer, slot, neurons of
    the rank]) or None, "shape", ...bookkeeping}. Ranks hold contiguous slices of the
    neurons, rank r the r-th, so the full counts are their concatenation along the
    neuron axis in rank order. The bookkeeping (done, gaps, recomputed) is the same on
    every rank (all ranks run the same scheduled steps); a disagreement is a bug.
    """
    if not outs:
        raise ValueError("gather_ranks: no rank answered")
    world = outs[0]["world"]
    by_rank = sorted(outs, key=lambda o: o["rank"])
    if [o["rank"] for o in by_rank] != list(range(world)) or any(o["world"] != world for o in outs):
        raise ValueError(f"gather_ranks: expected ranks 0..{world - 1} once each, "
                         f"got {[o['rank'] for o in outs]}")
    first = by_rank[0]
    for o in by_rank[1:]:
        for key in ("done", "gaps", "recomputed", "reused", "steps"):
            if o.get(key) != first.get(key):
                raise ValueError(f"gather_ranks: rank {o['rank']} disagrees with rank 0 on {key!r}")
    merged = {k: v for k, v in first.items() if k not in ("counts", "shape", "rank", "nll", "sums", "active_sums")}
    merged["errors"] = [e for o in by_rank for e in o.get("errors", [])]
    for key, dtype in (("counts", np.int64), ("sums", np.float64), ("active_sums", np.float64)):
        if first.get(key) is not None:  # activation sums are sliced by neuron like the counts
            parts = [np.frombuffer(o[key], dtype=dtype).reshape(o["shape"]) for o in by_rank]
            merged[key] = np.concatenate(parts, axis=-1)
    # Logits are gathered to one rank (or to all); take the first rank that has them.
    nll = [o["nll"] for o in by_rank if o.get("nll") is not None]
    merged["nll"] = np.frombuffer(nll[0], dtype=np.float64).copy() if nll else None
    return merged
