"""Counting inside mixture-of-experts models with transformers (docs/moe.md).

`MoERunner` is the transformers runner (lna.runners.hf: packed batches, real tokens only)
with other counting modules installed:
- every MoE block's `experts` module becomes `CountingExperts`: it takes the router's
  top-k indices and weights as transformers passes them, sorts the (token, expert) pairs by
  expert, computes each expert's gate_up projection on its rows, act(gate) * up with the
  counts in one pass (lna.kernels.expert_count), the down projection, and the weighted sum
  per token: the function of transformers' eager loop and grouped path. Routing weights
  scale the expert's output, never its gate, so the counts are those of the model's own
  computation, exact integers;
- always-on MLPs (shared experts, and dense layers' MLPs) become the dense runner's
  CountingMLP, counting into their layer's row of the always-on table.
Interventions (ExpertMasks: zero or set expert neurons, whole experts, always-on neurons)
are applied per (token, expert) pair in the same kernel; routing is left as the router chose
(a whole expert masked contributes 0 to its tokens, the others keep their weights).
Activation sums are refused in one line.
"""
from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from lna.core.errors import LnaError
from lna.kernels.expert_count import expert_offsets, expert_silu_mul, routed_counts
from lna.models import families, moe
from lna.runners import packing
from lna.runners.counting_mlp import CountingMLP, CountingState
from lna.runners.hf import HFRunner


class ExpertTables(NamedTuple):
    counts: np.ndarray  # int64 [layer, expert, language, neuron]: routed tokens with gate > 0
    routed: np.ndarray  # int64 [layer, expert, language]: tokens routed to the expert


class ExpertMasks(NamedTuple):
    """Interventions on a MoE model, one row per mask (either part may be None: nothing there).
    As masks: bool; as values: float32 (what the masked activations become)."""
    always_on: np.ndarray | None  # [n_masks, layer, neuron]: always-on MLPs, the store's padded width
    experts: np.ndarray | None  # [n_masks, layer, expert, neuron]


class _ByLayer:
    """A padded [layer, rows, widest] table read per layer at that layer's width (always-on
    MLPs differ in width): what CountingMLP indexes as state.counts[layer], masks, values."""

    def __init__(self, table, widths):
        self.table, self.widths = table, widths

    def __getitem__(self, layer):
        return self.table[layer, ..., :self.widths[layer]]

    @property
    def shape(self):
        return self.table.shape


class _MoEState(CountingState):
    def clear(self):
        super().clear()
        self.expert_counts = None  # int64 [layer, expert, language, neuron], updated in place
        self.routed = None  # int64 [layer, expert, language], updated in place
        self.expert_masks = None  # bool [layer, n_masks, expert, neuron]
        self.expert_values = None  # float32 [layer, n_masks, expert, neuron] (None: zero)


class CountingExperts(nn.Module):
    """transformers 5's experts module (3D gate_up_proj [E, 2I, H], down_proj [E, H, I]),
    counting per expert."""

    def __init__(self, experts: nn.Module, layer: int, state: _MoEState):
        super().__init__()
        self.gate_up_proj, self.down_proj = experts.gate_up_proj, experts.down_proj
        self.n_experts, self.width = self.gate_up_proj.shape[0], self.down_proj.shape[2]
        self.layer, self.state = layer, state

    def forward(self, hidden, top_k_index, top_k_weights):
        st = self.state
        st.calls += 1
        x, index, weights = hidden, top_k_index, top_k_weights
        if st.index is not None:  # real tokens only: padding is never computed or counted
            x, index, weights = (t.index_select(0, st.index) for t in (hidden, top_k_index, top_k_weights))
        top_k, width = index.shape[1], self.width
        experts = index.reshape(-1)
        order, bounds = expert_offsets(experts, self.n_experts)
        token = order // top_k
        rows = x.index_select(0, token)
        gate_up = rows.new_empty(rows.shape[0], 2 * width)
        for e, (a, b) in enumerate(zip(bounds, bounds[1:])):
            if b > a:
                torch.mm(rows[a:b], self.gate_up_proj[e].t(), out=gate_up[a:b])
        counting = st.expert_counts is not None
        lang = st.lang_ids.index_select(0, token) if counting else None
        h = expert_silu_mul(gate_up[:, :width], gate_up[:, width:], bounds, lang_ids=lang,
                            counts=st.expert_counts[self.layer] if counting else None,
                            **self._interventions(x.shape[0], token))
        out = rows.new_empty(rows.shape[0], x.shape[1])
        for e, (a, b) in enumerate(zip(bounds, bounds[1:])):
            if b > a:
                torch.mm(h[a:b], self.down_proj[e].t(), out=out[a:b])
        # As transformers: the weight scales the expert's output, summed per token in expert order.
        out = out * weights.reshape(-1).index_select(0, order).unsqueeze(1)
        final = torch.zeros_like(x).index_add_(0, token, out.to(x.dtype))
        if counting:
            routed_counts(experts.index_select(0, order), lang, st.routed[self.layer])
        if st.index is None:
            return final
        return hidden.new_zeros(hidden.shape).index_copy_(0, st.index, final)

    def _interventions(self, n_tokens, token) -> dict:
        """The kernel's masks, mask_ids (per pair, from its token's) and values, or {}."""
        st = self.state
        if st.expert_masks is None:
            return {}
        per_token = st.mask_ids
        if st.row_ids is not None:  # generate: [B * S] tokens, one intervention per row
            per_token = st.row_ids.repeat_interleave(n_tokens // st.row_ids.shape[0])
        if per_token is None:
            return {}
        values = None if st.expert_values is None else st.expert_values[self.layer]
        return {"masks": st.expert_masks[self.layer], "mask_ids": per_token.index_select(0, token), "values": values}


class _AlwaysOnMLP(CountingMLP):
    """CountingMLP of a shared expert that sees the flattened [B * S, H] hidden states
    (Qwen2-MoE): while generating with interventions, viewed as [B, S, H], one row per prompt."""

    def forward(self, x):
        rows = self.state.row_ids
        if x.dim() == 2 and rows is not None and x.shape[0] % rows.shape[0] == 0:
            return super().forward(x.view(rows.shape[0], -1, x.shape[-1])).view(x.shape)
        return super().forward(x)


class MoERunner(HFRunner):
    """`count` of the Runner protocol for MoE models, plus the expert tables."""

    def __init__(self, model: str, *, device: str = "cpu", dtype: str = "float32",
                 token_budget: int = 8192, max_row_tokens: int = 2048, revision: str | None = None,
                 info=None):
        from lna.models import fingerprint, loading

        if info is None or not isinstance(info.family, moe.MoEFamily):  # given: resolved once per run
            info = loading.resolve(model, revision, experts=True)
        with fingerprint.hashing(info) as identity:  # hashed while the weights load
            net, tokenizer = loading.load(info, device=device, dtype=dtype)
        strong, weak = identity.result()
        self._setup(net, tokenizer, info, strong, token_budget, max_row_tokens, weak)

    def _install(self, info) -> int:
        text = families.hf_text_config(self.model)
        top_k = getattr(text, "num_experts_per_tok", None)
        self.layout = moe.layout(self.decoder, info.family, info.name, top_k)
        self.neurons = self.layout.neurons
        self.state = _MoEState()
        modules = 0
        dense = families.BY_TYPE["llama"]  # a plain gated SiLU MLP
        for i, layer in enumerate(self.decoder.layers):
            experts, always_on, attr = moe.parts(layer, info.family)
            if experts is not None:
                _probe(experts, info.name, i)
                layer.mlp.experts = CountingExperts(experts, i, self.state)
                modules += 1
            if always_on is not None:
                counting = _AlwaysOnMLP(always_on, i, self.state, dense, {})
                setattr(layer if attr == "mlp" else layer.mlp, attr, counting)
                modules += 1
        return modules

    def _interventions(self, masks, values, offsets=None) -> None:
        """masks (and values, or None: zero) as ExpertMasks, onto the device per layer."""
        st = self.state
        st.clear()
        if offsets is not None:
            raise LnaError(f"{self.info.name}: adding to activations (offsets) is not done for mixture-of-experts "
                           "models; zero or set them with masks and values")
        if masks is None:
            return
        if not isinstance(masks, ExpertMasks) or (values is not None and not isinstance(values, ExpertMasks)):
            raise LnaError(f"{self.info.name}: a mixture-of-experts model takes its interventions as ExpertMasks "
                           "(expert neurons and always-on neurons); neuron sets of a dense model do not apply")
        lay, L = self.layout, self.layers
        n = next((len(m) for m in masks if m is not None), 0)
        if not n:
            return
        shapes = ((n, L, lay.neurons), (n, L, lay.experts, lay.expert_neurons))
        parts = []
        for table, dtype in ((masks, bool), (values, np.float32)):
            if table is None:
                parts.append((None, None))
                continue
            got = []
            for part, shape in zip(table, shapes):
                part = np.zeros(shape, dtype) if part is None else np.asarray(part)
                if part.shape != shape or part.dtype != dtype:
                    raise LnaError(f"{self.info.name}: intervention table {part.shape} {part.dtype}, expected "
                                   f"{shape} {np.dtype(dtype)}")
                # [layer, mask, ...] on the device, as the counting modules index them
                got.append(torch.from_numpy(np.ascontiguousarray(np.swapaxes(part, 0, 1))).to(self.device))
            parts.append(got)
        (always, experts), (always_v, experts_v) = parts
        st.masks = _ByLayer(always, lay.always_on)
        st.values = None if always_v is None else _ByLayer(always_v, lay.always_on)
        st.expert_masks, st.expert_values = experts, experts_v

    @torch.inference_mode()
    def count(self, samples: Sequence, languages: Sequence[str], *, sums: bool = False):
        """(counts [layer, language, neuron] of the always-on MLPs, padded to the widest, tokens
        [language], ExpertTables)."""
        if sums:
            raise LnaError(f"{self.info.name}: activation sums are not kept for mixture-of-experts models; "
                           "profile without --sums")
        samples = list(samples)
        lang_index = {lang: k for k, lang in enumerate(languages)}
        L, K, lay = self.layers, len(languages), self.layout
        dev = self.device
        counts = torch.zeros((L, K, lay.neurons), dtype=torch.int64, device=dev)
        expert_counts = torch.zeros((L, lay.experts, K, lay.expert_neurons), dtype=torch.int64, device=dev)
        routed = torch.zeros((L, lay.experts, K), dtype=torch.int64, device=dev)
        tokens = np.zeros(K, np.int64)
        try:
            for rows in self._batches(samples):
                batch = packing.build_batch(rows, samples, lang_index)
                # each always-on MLP counts into its own width of its layer's row
                self.state.counts = _ByLayer(counts, lay.always_on)
                self.state.expert_counts, self.state.routed = expert_counts, routed
                self.state.lang_ids = torch.from_numpy(batch.lang_ids).to(dev)
                self._forward(batch)
                tokens += np.bincount(batch.lang_ids[batch.lang_ids >= 0], minlength=K)
        finally:
            self.state.clear()
        expected = np.zeros(K, np.int64)
        np.add.at(expected, [lang_index[s.lang] for s in samples], [len(s.response) for s in samples])
        if not np.array_equal(tokens, expected):
            raise LnaError(f"counted {tokens.tolist()} response tokens, expected {expected.tolist()}")
        return counts.cpu().numpy(), tokens, ExpertTables(expert_counts.cpu().numpy(), routed.cpu().numpy())

    def generate_counting(self, *args, **kwargs):
        raise LnaError(f"{self.info.name}: counting while sampling is not supported for mixture-of-experts models; "
                       "lna counts their responses by force-decoding")


def _probe(experts: nn.Module, name: str, layer: int) -> None:
    """CountingExperts computes what the module's own forward does, on a probe input (a
    module that applies its activation or weights differently would be counted wrongly)."""
    w = experts.gate_up_proj
    E, H = w.shape[0], w.shape[2]
    gen = torch.Generator(device="cpu").manual_seed(layer)
    k = min(2, E)
    x = torch.randn(5, H, generator=gen).to(w.device, w.dtype)
    index = torch.stack([torch.randperm(E, generator=gen)[:k] for _ in range(5)]).to(w.device)
    weights = torch.rand(5, k, generator=gen).to(w.device)
    with torch.no_grad():
        want = experts(x, index, weights).float()
        got = CountingExperts(experts, layer, _MoEState())(x, index, weights).float()
    err = (got - want).abs().max().item()
    if not err <= 1e-2 * want.abs().max().item() + 1e-6:
        raise LnaError(f"{name}: the experts of layer {layer} ({type(experts).__name__}) do not compute "
                       f"down(silu(gate) * up) per expert (max difference {err:.3g}); not supported")
