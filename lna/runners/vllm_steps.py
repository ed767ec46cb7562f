"""Each scheduled step inside a vLLM worker (lna.runners.vllm_worker): the model runner's
`_model_forward`, wrapped so that a step of an lna call first gives every token its slot
from the step's requests (language to count, mask to score under, or intervention id),
runs the forward with those ids in the buffer every layer reads, checks that every layer
ran lna's activation, and (nll) scores the response tokens from the hidden states.
`st` is the rank's state (vllm_worker._State).
"""
import numpy as np
import torch

from lna.runners.vllm_batch import GENERATE_KEY, META_KEY

# Logit rows scored at once: bounds the [rows, vocab] fp32 temporaries (~0.5 GB at 128k vocab).
SCORE_ROWS = 1024


def planned_forward(runner, forward, st):
    """runner._model_forward, preceded by planning the step's per-token slots."""

    def planned(*args, **kwargs):
        if st.mode is None:
            return forward(*args, **kwargs)
        batch = runner.input_batch
        n = batch.num_reqs
        req_ids = batch.req_ids[:n]
        qsl = runner.query_start_loc.np[:n + 1]
        lens = np.diff(qsl)
        if st.mode == "generate":  # intervention ids only: nothing to plan or count
            return _intervened(forward, args, kwargs, runner, req_ids, lens, kwargs["positions"].shape[-1], st)
        starts = batch.num_computed_tokens_cpu[:n]
        metas, sequences = [], []
        for req_id in req_ids:
            req = runner.requests[req_id]
            params = req.sampling_params
            meta = params.extra_args.get(META_KEY) if params is not None and params.extra_args else None
            if meta is not None and len(meta) == 5:  # a sampled response: one of n, told apart by its seed
                first, lo, hi, slot, seed = meta
                meta = (first + params.seed - seed, lo, hi, slot)
            metas.append(meta)
            sequences.append(req.prompt_token_ids)
        positions = kwargs.get("positions")
        n_tokens = positions.shape[-1]
        step = st.tracker.step(metas, starts, lens, n_tokens, sequences)
        # The runner derives positions from the same offsets; on CPU the check is free.
        if positions.device.type == "cpu" and not np.array_equal(
                positions[:len(step.positions)].numpy(), step.positions):
            st.errors.append("token positions of a step differ from the planned ones")
        if not metas or all(m is None for m in metas):
            return forward(*args, **kwargs)
        st.steps += 1
        before = list(st.calls)
        if st.mode == "count":
            st.planned += int((step.ids >= 0).sum())
        # Through the persistent buffer that compiled graphs read (count: languages; eager nll: masks).
        hidden = _stepped(forward, args, kwargs, st, step.ids if st.mode == "count" or not st.compiled else None)
        if st.mode == "nll" and not st.compiled and [c - b for c, b in zip(st.calls, before)] != [1] * len(st.calls):
            st.errors.append("some MLP layers did not run the masking activation in a step")
        if st.mode == "nll" and len(step.rows):
            _score(runner, hidden, step, st)
        return hidden

    return planned


def _stepped(forward, args, kwargs, st, ids):
    """The forward of a planned step, with its ids (int32 [rows], or None) in the buffer that
    every layer reads, and -1 there again after it."""
    n_tokens = kwargs["positions"].shape[-1]
    if ids is not None:
        st.ids[:n_tokens].copy_(torch.from_numpy(ids))
    st.rows = n_tokens
    try:
        return forward(*args, **kwargs)
    finally:
        st.rows = 0
        if ids is not None:
            st.ids[:n_tokens].fill_(-1)


def _intervened(forward, args, kwargs, runner, req_ids, lens, n_tokens, st):
    """A generation step: every scheduled token of a request carries its intervention id
    (SamplingParams.extra_args[GENERATE_KEY]; -1 or absent: none)."""
    slots = []
    for req_id in req_ids:
        params = runner.requests[req_id].sampling_params
        extra = params.extra_args if params is not None else None
        slots.append(int(extra.get(GENERATE_KEY, -1)) if extra else -1)
    ids = np.full(n_tokens, -1, dtype=np.int32)
    scheduled = np.repeat(np.asarray(slots, dtype=np.int32), lens)
    ids[:len(scheduled)] = scheduled
    if not (ids >= 0).any():
        return forward(*args, **kwargs)
    st.steps += 1
    before = list(st.calls)
    hidden = _stepped(forward, args, kwargs, st, ids)
    if [c - b for c, b in zip(st.calls, before)] != [1] * len(st.calls):
        st.errors.append("some MLP layers did not run the intervening activation in a step "
                         "(compiled or CUDA-graph code bypassed it)")
    return hidden


def _score(runner, hidden, step, st):
    """Add -log p(target) of each scoring row to its sample's total (fp32 logits, the loss in float64)."""
    device = hidden.device
    rows = torch.from_numpy(step.rows).to(device)
    samples = torch.from_numpy(step.samples).to(device)
    targets = torch.from_numpy(step.targets).to(device)
    for i in range(0, len(rows), SCORE_ROWS):
        logits = runner.model.compute_logits(hidden[rows[i:i + SCORE_ROWS]])
        if logits is None:  # tensor parallel: the logits were gathered to another rank
            continue
        st.has_logits = True
        logp = torch.log_softmax(logits.double(), dim=-1)  # float64, as the hf runner's loss
        picked = logp.gather(1, targets[i:i + SCORE_ROWS, None]).squeeze(1)
        st.nll.index_add_(0, samples[i:i + SCORE_ROWS], -picked.double())
