"""One forward of a shared-prompt packed batch through the decoder: packed ("varlen") or dense.

Packed (the default): the decoder runs on the real tokens only, flattened to one sequence
[1, N] with their position ids, so no padding enters projections, norms, rotary, MLPs or
attention. Attention goes through `attention`, registered with transformers'
AttentionInterface as "lna_packed" and switched on only around the packed forward (generate
and its KV cache stay on transformers' own implementation). The name has no mask function in
transformers' AttentionMaskInterface, so the model builds no mask at all; `attention` computes
each segment on its own: a row's prompt causally over itself, each response over [its prompt's
keys, its own keys] with lower-right causal alignment (query i sees the P prompt keys and its
own keys <= i), sliding windows measured in positions: what the dense mask allows.

Dense (the reference, as vLLM's forward_native): the padded [B, S] batch with an additive 4D
mask per attention type (packing.attention_mask) through the model's own attention. It is
used where the packed path cannot compute the model's attention exactly, decided once per
model: by its config (DENSE_CONFIG; and off the CPU, where one SDPA launch per segment is not
yet measured against the mask), then by a probe forward at the first batch that checks
every layer's attention comes through `attention` with only the arguments it honours (HONOURED;
a soft cap, attention sinks, position biases or anything unknown falls back).
"""
import contextlib
import threading

import numpy as np
import torch
import torch.nn.functional as F

from lna.core.errors import first_line
from lna.runners import packed_ops, packing

NAME = "lna_packed"
# config entries (of the text config) whose attention the packed path does not compute
DENSE_CONFIG = {"attn_logit_softcapping": "attention logit soft-capping",
                "use_bidirectional_attention": "bidirectional attention",
                "alibi": "ALiBi position biases"}
# arguments the attention functions get that `attention` honours (scaling, dropout 0, the
# sliding window the runner's rule gives) or that do not change attention; any other must be None
HONOURED = {"position_ids", "use_cache", "cache_position", "output_attentions", "sliding_window", "is_causal",
            "scaling", "dropout"}

_active = threading.local()  # .segments: the Segments of the packed forward running in this thread


class Segments:
    """A packed batch's attention pattern over its N real tokens, as (queries, keys, mask)
    per segment and per sliding window in use; masks are built once per forward (all layers
    share them) and only where the segment needs one: [queries, keys], never N x N."""

    def __init__(self, lengths, windows, dtype, device, window_of):
        self.window_of = window_of  # layer -> sliding window or None
        self.parts = {w: [] for w in windows}
        self.problems = None  # the probe's records: (layer, problem or None)
        start = 0
        for lens in lengths:  # [P, n1, n2, ...] per row
            P, at = lens[0], start + lens[0]
            segs = [(start, P, None)] if P else []  # (query start, query count, key index)
            for n in lens[1:]:
                if n:
                    # keys: the prompt's and the response's own; one slice when they touch
                    keys = (slice(start, at + n) if at == start + P else
                            torch.cat([torch.arange(start, start + P), torch.arange(at, at + n)]).to(device))
                    segs.append((at, n, keys))
                at += n
            for w in windows:
                for q0, n, keys in segs:
                    prompt = keys is None
                    offset = 0 if prompt else P  # position of the first query; keys at positions 0..
                    n_keys = n + offset
                    q = slice(q0, q0 + n)
                    if (w is None or w >= n_keys) and offset == 0:  # square and causal
                        self.parts[w].append((q, q, None))
                        continue
                    qpos = torch.arange(offset, offset + n, device=device)[:, None]
                    kpos = torch.arange(n_keys, device=device)[None, :]
                    allowed = kpos <= qpos
                    if w is not None:
                        allowed &= (qpos - kpos) < w
                    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
                    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
                    self.parts[w].append((q, q if prompt else keys, mask))
            start = at
        self.tokens = start


def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' attention-function signature: query [1, H, N, D], key and value
    [1, KV heads, N, D]; returns ([1, N, H, Dv], None)."""
    seg = getattr(_active, "segments", None)
    if seg is None:  # not inside a packed forward: transformers' SDPA, unchanged
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    layer = getattr(module, "layer_idx", None)
    if seg.problems is not None:
        seg.problems.append((layer, _problem(seg, module, query, key, attention_mask, dropout, kwargs)))
        if seg.problems[-1][1]:
            return query.new_zeros(query.shape[0], query.shape[2], query.shape[1], value.shape[-1]), None
    heads, kv_heads = query.shape[1], key.shape[1]
    out = query.new_empty(1, query.shape[2], heads, value.shape[-1])
    for q, k, mask in seg.parts[seg.window_of[layer]]:
        if isinstance(k, slice):
            ks, vs = key[:, :, k], value[:, :, k]
        else:
            ks, vs = key.index_select(2, k), value.index_select(2, k)
        o = F.scaled_dot_product_attention(query[:, :, q], ks, vs, attn_mask=mask, is_causal=mask is None,
                                           scale=scaling, enable_gqa=heads != kv_heads)
        out[:, q] = o.transpose(1, 2)
    return out, None


def _problem(seg, module, query, key, attention_mask, dropout, kwargs) -> str | None:
    """Why this call's attention is not what `attention` computes (None: it is)."""
    layer = getattr(module, "layer_idx", None)
    if layer not in seg.window_of:
        return f"an attention module without a layer index ({layer!r})"
    if attention_mask is not None:
        return "the model built an attention mask of its own"
    if query.shape[0] != 1 or query.shape[2] != seg.tokens or key.shape[2] != seg.tokens:
        return f"attention over {tuple(query.shape)} x {tuple(key.shape)}, not the {seg.tokens} packed tokens"
    if query.shape[1] % key.shape[1]:
        return f"{query.shape[1]} query heads over {key.shape[1]} key heads"
    if dropout:
        return f"attention dropout {dropout}"
    if False in (kwargs.get("is_causal", True), getattr(module, "is_causal", True)) or kwargs.get("output_attentions"):
        return "non-causal attention, or attention weights asked for"
    if "sliding_window" in kwargs and kwargs["sliding_window"] != seg.window_of[layer]:
        return f"sliding window {kwargs['sliding_window']} where lna's mask uses {seg.window_of[layer]}"
    other = sorted(k for k, v in kwargs.items() if k not in HONOURED and v is not None)
    return f"attention arguments {', '.join(other)}" if other else None


class Forward:
    """Runs one packing.Batch through `decoder` (packed where the model allows, else dense)."""

    def __init__(self, decoder, text_config, layers: int, layer_types, sliding_window, dtype, device):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        if NAME not in ALL_ATTENTION_FUNCTIONS:
            ALL_ATTENTION_FUNCTIONS.register(NAME, attention)
        self.decoder, self.dtype, self.device = decoder, dtype, device
        self.layer_types, self.sliding_window = layer_types, sliding_window
        types = getattr(text_config, "layer_types", None) or []
        # the dense mask's rule: the window on every layer, or on sliding-attention layers only
        self.window_of = {i: sliding_window if not layer_types or types[i] == "sliding_attention" else None
                          for i in range(layers)}
        self.configs = {id(c): c for c in [decoder.config, text_config] +
                        [m.config for m in decoder.modules() if hasattr(m, "config")]}.values()
        self.swaps = packed_ops.Swaps(decoder)  # fused RMSNorm and rotary in the packed forward
        self.fast_ops = True
        why = [what for key, what in DENSE_CONFIG.items() if getattr(text_config, key, None)]
        if torch.device(device).type != "cpu":  # per-segment launches are not yet measured against the mask there
            why.append(f"on {torch.device(device).type} the dense path stays the default (the packed one is "
                       "measured on CPU only)")
        self.packed = False if why else None  # None: decided by the probe at the first batch
        self.why_dense = why[0] if why else None

    def __call__(self, batch: packing.Batch, state):
        """Hidden states after the final norm: [N, hidden] of the real tokens (packed) or
        [B*S, hidden] (dense), and the rows of the latter holding batch.pred."""
        if self.packed is None:
            self.packed = self._probe(state)
        if not self.packed:
            state.index = torch.from_numpy(batch.real).to(self.device)
            return self._dense(batch), batch.pred
        state.index = None
        real = batch.real
        seg = self._segments(batch)
        hidden = self._run(seg, batch.input_ids.reshape(-1)[real], batch.position_ids.reshape(-1)[real])
        return hidden, np.searchsorted(real, batch.pred)  # real is sorted: flat b*S+s -> packed row

    def _dense(self, batch):
        dev = self.device
        seg = torch.from_numpy(batch.segment).to(dev)
        pos = torch.from_numpy(batch.position_ids).to(dev)
        if self.layer_types:
            mask = {t: packing.attention_mask(seg, pos, self.dtype,
                                              self.sliding_window if t == "sliding_attention" else None)
                    for t in self.layer_types}
        else:
            mask = packing.attention_mask(seg, pos, self.dtype, self.sliding_window)
        out = self.decoder(input_ids=torch.from_numpy(batch.input_ids).to(dev), attention_mask=mask,
                           position_ids=pos, use_cache=False)
        return out.last_hidden_state.reshape(-1, out.last_hidden_state.shape[-1])

    def _segments(self, batch) -> Segments:
        lengths = []
        for row in batch.segment:
            ids = row[row >= 0]
            lens = np.bincount(ids, minlength=1).tolist() if ids.size else [0]
            lengths.append(lens)
        windows = set(self.window_of.values())
        return Segments(lengths, windows, self.dtype, self.device, self.window_of)

    def _run(self, seg: Segments, ids, pos):
        saved = [(c, c._attn_implementation) for c in self.configs]
        _active.segments = seg
        try:
            for c, _ in saved:
                c._attn_implementation = NAME
            with self.swaps if self.fast_ops else contextlib.nullcontext():
                out = self.decoder(input_ids=torch.from_numpy(np.ascontiguousarray(ids))[None].to(self.device),
                                   position_ids=torch.from_numpy(np.ascontiguousarray(pos))[None].to(self.device),
                                   attention_mask=None, use_cache=False)
        finally:
            _active.segments = None
            for c, impl in saved:
                c._attn_implementation = impl
        return out.last_hidden_state[0]

    def _probe(self, state) -> bool:
        """One small packed forward (two rows; a prompt shared by two responses) that records
        each attention call, counting nothing: packed only if every layer's attention came
        through `attention` with nothing it does not honour."""
        lengths = [[3, 2, 2], [1, 1]]
        seg = Segments(lengths, set(self.window_of.values()), self.dtype, self.device, self.window_of)
        seg.problems = []
        n = seg.tokens
        ids = np.arange(n, dtype=np.int64) % 3 + 1
        pos = np.array([0, 1, 2, 3, 4, 3, 4, 0, 1], np.int64)
        saved = dict(vars(state))
        state.clear()  # nothing counted, no intervention
        try:
            with torch.inference_mode():
                self._run(seg, ids, pos)
        except Exception as e:  # a model that refuses the packed layout runs as before
            self.why_dense = f"the packed probe forward failed: {type(e).__name__}: {first_line(e)}"
            return False
        finally:
            vars(state).update(saved)
        bad = [(layer, why) for layer, why in seg.problems if why]
        seen = {layer for layer, _ in seg.problems}
        missing = sorted(set(self.window_of) - seen)
        if bad:
            self.why_dense = f"layer {bad[0][0]}: {bad[0][1]}"
        elif missing:
            self.why_dense = f"layer {missing[0]}'s attention does not go through transformers' attention interface"
        return not bad and not missing
