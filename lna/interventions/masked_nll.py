"""Masked NLL: the response-token negative log-likelihood of samples with sets of neurons
deactivated (or set to given values), the measurement lna-ablate and lna-steer share.

A runner's `nll` takes per-sample mask ids, so several masks share a batch; `evaluate`
fills a [1 + masks, samples] table (row 0: no mask) cell by cell and only where it is
NaN, which is what makes both commands resumable (their checkpoints hold the table).
"""
import numpy as np

from lna.runners.packing import chunks


def evaluate(runner, samples, masks: np.ndarray, *, nll: np.ndarray | None = None, token_budget: int | None = None,
             on_chunk=None, values: np.ndarray | None = None) -> np.ndarray:
    """Response-token NLL sums, float64 [1 + n_masks, n_samples]: row 0 with nothing
    deactivated, row m + 1 with masks[m] (zeroed, or set to values[m] where `values` is
    given: lna-steer). Only the NaN cells of `nll` are computed, about one forward batch
    per runner call (rows of different settings share batches through the per-token mask
    ids); `on_chunk(nll, tokens)` follows every call (checkpoints, progress)."""
    samples = list(samples)
    n_masks = mask_rows(masks)
    n_rows = 1 + n_masks
    nll = np.full((n_rows, len(samples)), np.nan) if nll is None else nll
    rows, cols = np.nonzero(np.isnan(nll))
    work = [samples[i] for i in cols]
    budget = getattr(runner, "token_budget", None) or token_budget or 16384  # vLLM: tokens per call
    for idx in chunks(work, budget, settings=rows - 1):
        set_to = {} if values is None else {"values": values}
        got = runner.nll([work[j] for j in idx], masks if n_masks else None, [int(rows[j]) - 1 for j in idx],
                         **set_to)
        nll[rows[idx], cols[idx]] = np.asarray(got, np.float64)  # one assignment: whole or not at all
        if on_chunk is not None:
            on_chunk(nll, sum(predicted(work[j]) for j in idx))
    return nll


def mask_rows(masks) -> int:
    """Masks in a table: bool [n_masks, ...], or lna.runners.moe.ExpertMasks of such tables."""
    if isinstance(masks, tuple):  # ExpertMasks (a NamedTuple): its parts share n_masks
        return next((len(part) for part in masks if part is not None), 0)
    return len(masks)


def predicted(sample) -> int:
    """Response tokens whose NLL is measured (all of them after a non-empty prompt)."""
    return len(sample.response) - (0 if len(sample.prompt) else 1)
