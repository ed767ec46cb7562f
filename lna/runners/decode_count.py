"""Counting while transformers samples (the hf runner's `generate_counting`).

`generate` runs the model once on the left-padded prompts (prefill), then once per new
token, feeding each row the token it sampled last. A forward pre-hook on the model sees
the input ids of every one of those calls, so it knows, without reading transformers'
internal state, which of the fed tokens are response tokens to count:
- positions before `width` (the padded prompt) are prompts or padding: never counted;
- a fed token at position width + k (k < max_new_tokens) is response token k of its row,
  counted unless the row has fed an EOS before or feeds one now (EOS ends a response and
  is never part of it; a finished row is fed padding, which is never counted either);
- the runner asks for max_new_tokens + 1 tokens, so the last kept token is fed too; the
  extra token it samples is dropped (a seeded sampler's kept tokens do not change).
`check` then proves the exactly-once rule against the output: every row counted exactly
its response's tokens, and the tokens fed at those positions are the response's own.
"""
import torch

from lna.core.errors import LnaError


class Tracker:
    def __init__(self, state, counts, rows, width: int, max_new_tokens: int, eos, layers: int, sums=()):
        self.state, self.counts, self.layers = state, counts, layers
        self.sums = tuple(sums) or (None, None)  # (sums, active_sums) float64 tables, or none
        device = counts.device
        self.slots = torch.tensor(rows, dtype=torch.int32, device=device)  # language slot of each row
        self.width, self.limit = width, width + max_new_tokens
        self.eos = torch.tensor(sorted(eos), dtype=torch.int64, device=device)
        self.ended = torch.zeros(len(rows), dtype=torch.bool, device=device)
        self.position = 0  # positions fed so far (rows are rectangular: one for all)
        self.fed, self.counted = [], []  # per forward: response tokens fed, and which were counted

    def before(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None or ids.dim() != 2 or ids.shape[0] != len(self.slots):
            raise LnaError("generate_counting: the model was called without input ids of the batch's rows "
                           "(an embeddings-only or reordered call); use --force-decode")
        steps = ids.shape[1]
        lang = torch.full(ids.shape, -1, dtype=torch.int32, device=ids.device)
        a = min(max(0, self.width - self.position), steps)  # first response position of this call
        b = max(a, min(steps, self.limit - self.position))
        if a < b:
            fed = ids[:, a:b]
            hit = torch.isin(fed, self.eos)
            live = ~self.ended[:, None] & (hit.cumsum(1) == 0)
            lang[:, a:b] = torch.where(live, self.slots[:, None], -1)
            self.ended |= hit.any(1)
            self.fed.append(fed)
            self.counted.append(live)
        self.position += steps
        st = self.state
        st.index, st.counts, st.lang_ids, st.calls = None, self.counts, lang.reshape(-1), 0
        st.sums, st.active_sums = self.sums

    def detach(self) -> None:
        """Take the counting tables off the runner's state (interventions stay)."""
        st = self.state
        st.counts = st.lang_ids = st.sums = st.active_sums = None

    def after(self, module, args, output):
        if self.state.calls != self.layers:  # a layer bypassed its MLP: counts would be wrong
            raise LnaError(f"generate_counting: {self.state.calls} of {self.layers} MLPs ran in a decoding step; "
                           "model not supported")

    def check(self, responses, name: str) -> None:
        """Each row counted exactly its response (the tokens before EOS, at most max_new_tokens),
        and the tokens it fed there are that response's."""
        rows = len(self.slots)
        fed = torch.cat(self.fed, 1).cpu() if self.fed else torch.zeros(rows, 0, dtype=torch.int64)
        counted = torch.cat(self.counted, 1).cpu() if self.counted else torch.zeros(rows, 0, dtype=torch.bool)
        for r, resp in enumerate(responses):
            k = len(resp)
            ok = (int(counted[r].sum()) == k and bool(counted[r, :k].all())
                  and fed[r, :k].tolist() == list(resp))
            if not ok:
                raise LnaError(f"{name}: counting while sampling counted {int(counted[r].sum())} tokens of "
                               f"a {k}-token response (or other tokens than it); use --force-decode, "
                               "and report this")
