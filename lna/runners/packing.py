"""Shared-prompt packing: a prompt and several of its responses in one row, one forward.

A row is [prompt | response 1 | response 2 | ...]. Each response sees the prompt and its own
earlier tokens only (lna.runners.packed_attention computes that per segment on the real
tokens; attention_mask below is the dense 4D mask of the reference path), and position ids
restart after the prompt for every response, so each response is computed exactly as in its
own "prompt + response" sequence while the prompt is processed once (docs/design.md,
"Work avoided"). Rows of similar length are batched under a token budget; padding is never
counted and never enters the MLPs (the packed path never computes it; the dense one gathers
real tokens before the MLPs).
"""
from dataclasses import dataclass, field

import numpy as np

from lna.inputs.samples import Sample


@dataclass
class Row:
    prompt: np.ndarray
    samples: list = field(default_factory=list)  # indices into the caller's sample list
    responses: list = field(default_factory=list)
    setting: int = -1  # ablation mask id applied to every token of the row

    @property
    def length(self) -> int:
        return len(self.prompt) + sum(len(r) for r in self.responses)


def chunks(samples: list[Sample], token_budget: int, settings=None, multiple: int = 8):
    """Index lists into `samples`, each about one forward batch: rows (a question's samples,
    under one ablation setting where `settings` gives one per sample), longest first, while
    rows x padded length stays within `token_budget` as in plan_batches. The unit of
    progress, checkpoints and resume in lna-profile and lna-ablate."""
    units: dict = {}
    for i, s in enumerate(samples):
        units.setdefault((s.group or s.key, -1 if settings is None else int(settings[i])), []).append(i)
    size_of = {k: len(samples[idx[0]].prompt) + sum(len(samples[i].response) for i in idx)
               for k, idx in units.items()}
    chunk, rows, width = [], 0, 0
    for key in sorted(units, key=lambda k: -size_of[k]):
        w = max(width, _pad_to(size_of[key], multiple))
        if chunk and (rows + 1) * w > token_budget:
            yield chunk
            chunk, rows, w = [], 0, _pad_to(size_of[key], multiple)
        chunk += units[key]
        rows, width = rows + 1, w
    if chunk:
        yield chunk


def plan_rows(samples: list[Sample], max_row_tokens: int, settings=None) -> list[Row]:
    """Group samples sharing a prompt (and setting) into rows of at most `max_row_tokens`
    (a longer group is split, its prompt repeated; a single overlong sample gets a row)."""
    groups: dict = {}
    for i, s in enumerate(samples):
        setting = -1 if settings is None else int(settings[i])
        key = (s.group or s.key, setting, tuple(s.prompt))
        groups.setdefault(key, []).append(i)
    rows = []
    for (_, setting, prompt), idx in groups.items():
        prompt = np.asarray(prompt, dtype=np.int64)
        row = Row(prompt, setting=setting)
        for i in sorted(idx, key=lambda i: -len(samples[i].response)):
            resp = np.asarray(samples[i].response, dtype=np.int64)
            if row.responses and row.length + len(resp) > max_row_tokens:
                rows.append(row)
                row = Row(prompt, setting=setting)
            row.samples.append(i)
            row.responses.append(resp)
        rows.append(row)
    return rows


def plan_batches(rows: list[Row], token_budget: int, multiple: int = 8) -> list[list[Row]]:
    """Length-sorted rows, greedily batched so that rows x padded length <= token_budget."""
    batches, current, width = [], [], 0
    for row in sorted(rows, key=lambda r: r.length):
        w = _pad_to(row.length, multiple)
        if current and (len(current) + 1) * max(width, w) > token_budget:
            batches.append(current)
            current, width = [], 0
        current.append(row)
        width = max(width, w)
    if current:
        batches.append(current)
    return batches


def _pad_to(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@dataclass
class Batch:
    input_ids: np.ndarray  # int64 [B, S]
    position_ids: np.ndarray  # int64 [B, S]
    segment: np.ndarray  # int64 [B, S]: 0 prompt, j >= 1 response j of the row, -1 padding
    real: np.ndarray  # int64 [N]: flat indices of non-padding tokens (what the MLPs see)
    lang_ids: np.ndarray  # int32 [N]: language index of response tokens, -1 for prompt tokens
    mask_ids: np.ndarray  # int32 [N]: ablation setting of each real token (-1: none)
    # next-token prediction of response tokens (for NLL): logits at `pred` predict `target`
    pred: np.ndarray  # int64 [M] flat indices
    target: np.ndarray  # int64 [M] token ids
    target_sample: np.ndarray  # int64 [M] index of the sample (caller's list) of each target


def build_batch(rows: list[Row], samples: list[Sample], lang_index: dict, multiple: int = 8) -> Batch:
    B = len(rows)
    S = _pad_to(max(r.length for r in rows), multiple)
    ids = np.zeros((B, S), np.int64)
    pos = np.zeros((B, S), np.int64)
    seg = np.full((B, S), -1, np.int64)
    lang = np.full((B, S), -1, np.int32)
    setting = np.full((B, S), -1, np.int32)
    pred, target, tsample = [], [], []
    for b, row in enumerate(rows):
        P = len(row.prompt)
        ids[b, :P], pos[b, :P], seg[b, :P] = row.prompt, np.arange(P), 0
        setting[b, : row.length] = row.setting
        start = P
        for j, (i, resp) in enumerate(zip(row.samples, row.responses), start=1):
            n = len(resp)
            sl = slice(start, start + n)
            ids[b, sl], pos[b, sl], seg[b, sl] = resp, P + np.arange(n), j
            lang[b, sl] = lang_index[samples[i].lang]
            # the first response token is predicted by the last prompt token
            prev = np.concatenate([[P - 1], np.arange(start, start + n - 1)]) if P else np.arange(start, start + n - 1)
            tgt = resp if P else resp[1:]
            pred.append(b * S + prev)
            target.append(tgt)
            tsample.append(np.full(len(tgt), i))
            start += n
    flat_seg = seg.reshape(-1)
    real = np.flatnonzero(flat_seg >= 0)
    cat = (lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt))
    return Batch(ids, pos, seg, real, lang.reshape(-1)[real], setting.reshape(-1)[real],
                 cat(pred, np.int64), cat(target, np.int64), cat(tsample, np.int64))


def attention_mask(segment, position, dtype, sliding_window: int | None = None):
    """Additive 4D mask [B, 1, S, S] (0 = attend, finfo.min = not) for a packed batch.

    Query q sees key k <= q of its row when k is a prompt token or in q's own response;
    padding queries see only themselves (no all-masked rows, hence no NaN).
    """
    import torch

    seg = segment
    S = seg.shape[1]
    idx = torch.arange(S, device=seg.device)
    causal = idx[None, :] <= idx[:, None]  # [q, k]
    sq, sk = seg[:, :, None], seg[:, None, :]
    allowed = causal[None] & (sk >= 0) & ((sk == 0) | (sk == sq))
    if sliding_window:
        # positions restart per response, so the window is measured in positions, not slots
        allowed &= (position[:, :, None] - position[:, None, :]) < sliding_window
    allowed |= torch.eye(S, dtype=torch.bool, device=seg.device)[None] & (sq < 0)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=seg.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]
