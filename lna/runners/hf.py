"""The transformers runner: counting MLPs installed into an unmodified HF model.

Each decoder layer's MLP is replaced by `CountingMLP`, which computes exactly
down(act(gate(x)) * up(x)) (act: SiLU, or GELU-tanh for Gemma; gate and up from separate
projections or from one packed gate_up_proj, read as views without a copy) through the
fused kernel (lna.kernels.silu_mul) and, in the same pass, counts gate > 0 per language
on response tokens. Batches are shared-prompt packed rows (lna.packing) with a 4D mask
(one per attention type where layers mix full and sliding-window attention); the MLPs see
real tokens only (padding is gathered out), so no padded token is ever computed through
them or counted.
"""
from typing import Sequence

import numpy as np
import torch
from torch import nn

from lna import families, identity, models, packing
from lna.errors import LnaError
from lna.kernels import silu_mul, silu_mul_packed
from lna.runners.base import Sample

MASK_TYPES = ("full_attention", "sliding_attention")  # attention types a packed batch can mask


class _State:
    """What the counting MLPs read during one forward (set by the runner, then cleared)."""

    def __init__(self):
        self.clear()

    def clear(self):
        self.index = None  # flat indices of the real tokens, or None: every token
        self.lang_ids = None  # int32 [N] language index per real token (-1: not counted)
        self.counts = None  # int64 [layer, language, neuron], updated in place
        self.masks = None  # bool [layer, n_masks, neuron]
        self.mask_ids = None  # int32 [N] mask per real token (-1: none)
        self.calls = 0


class CountingMLP(nn.Module):
    def __init__(self, mlp: nn.Module, layer: int, state: _State, family: families.Family, act: dict):
        super().__init__()
        self.packed = family.packed
        if self.packed:
            self.gate_up_proj = mlp.gate_up_proj
        else:
            self.gate_proj, self.up_proj = mlp.gate_proj, mlp.up_proj
        self.down_proj = mlp.down_proj
        self.layer, self.state, self.act = layer, state, act

    def forward(self, x):
        st = self.state
        st.calls += 1
        flat = x.reshape(-1, x.shape[-1])
        if st.index is not None:
            flat = flat.index_select(0, st.index)
        kw = dict(lang_ids=st.lang_ids, counts=None if st.counts is None else st.counts[self.layer],
                  masks=None if st.mask_ids is None else st.masks[self.layer], mask_ids=st.mask_ids,
                  check_ids=False,  # the runner builds the ids; a range check would sync the GPU per layer
                  **self.act)
        if self.packed:  # gate and up are views of the one [T, 2I] output
            h = silu_mul_packed(self.gate_up_proj(flat), **kw)
        else:
            h = silu_mul(self.gate_proj(flat), self.up_proj(flat), **kw)
        out = self.down_proj(h)
        if st.index is not None:
            full = out.new_zeros(x.numel() // x.shape[-1], out.shape[-1])
            out = full.index_copy_(0, st.index, out)
        return out.view(*x.shape[:-1], out.shape[-1])


class HFRunner:
    """Force-decoding with transformers: `count`, `generate` and `nll` of the Runner protocol."""

    def __init__(self, model: str, *, device: str = "cpu", dtype: str = "float32",
                 token_budget: int = 8192, max_row_tokens: int = 2048, revision: str | None = None):
        info = models.resolve(model, revision)
        net, tokenizer = models.load(info, device=device, dtype=dtype)
        # From the files, not the loaded tensors: the same for every backend and dtype.
        self._setup(net, tokenizer, info, identity.of(info), token_budget, max_row_tokens, identity.legacy(info))

    @classmethod
    def wrap(cls, net, tokenizer, info: models.ModelInfo, *, token_budget: int = 8192,
             max_row_tokens: int = 2048) -> "HFRunner":
        """A runner around a model built in memory (benches: random 7B weights, never saved);
        its identity is "unsaved", which matches no store or neuron set."""
        self = cls.__new__(cls)
        self._setup(net, tokenizer, info, identity.UNSAVED, token_budget, max_row_tokens)
        return self

    def _setup(self, net, tokenizer, info, fingerprint, token_budget, max_row_tokens, legacy_fingerprint=None):
        self.model, self.tokenizer, self.info, self.fingerprint = net, tokenizer, info, fingerprint
        self.legacy_fingerprint = legacy_fingerprint
        weight = net.get_input_embeddings().weight
        self.device, self.dtype = weight.device, weight.dtype
        self.token_budget, self.max_row_tokens = token_budget, max_row_tokens
        self.layers, self.neurons = info.layers, info.neurons
        self.family, self.decoder = info.family, families.decoder(net)
        text = families.hf_text_config(net)
        self.sliding_window = getattr(text, "sliding_window", None)
        # Layers that mix full and sliding-window attention take one mask per type.
        self.layer_types = sorted(set(getattr(text, "layer_types", None) or []))
        unknown = [t for t in self.layer_types if t not in MASK_TYPES]
        if unknown:
            raise LnaError(f"{info.name}: layers of type {', '.join(unknown)} cannot run packed batches; "
                           f"lna supports {models.SUPPORTED}")
        self.state = _State()
        act = families.kernel_kwargs(info.family, info.name)
        for i, layer in enumerate(self.decoder.layers):
            layer.mlp = CountingMLP(layer.mlp, i, self.state, info.family, act)

    # -- one packed forward -----------------------------------------------------------
    def _forward(self, batch: packing.Batch):
        """Hidden states [B*S, H] after the final norm, with the state set for the MLPs."""
        dev = self.device
        seg = torch.from_numpy(batch.segment).to(dev)
        pos = torch.from_numpy(batch.position_ids).to(dev)
        if self.layer_types:
            mask = {t: packing.attention_mask(seg, pos, self.dtype,
                                              self.sliding_window if t == "sliding_attention" else None)
                    for t in self.layer_types}
        else:
            mask = packing.attention_mask(seg, pos, self.dtype, self.sliding_window)
        self.state.index = torch.from_numpy(batch.real).to(dev)
        self.state.calls = 0
        out = self.decoder(input_ids=torch.from_numpy(batch.input_ids).to(dev), attention_mask=mask,
                           position_ids=pos, use_cache=False)
        if self.state.calls != self.layers:  # a layer bypassed its MLP: counts would be wrong
            raise LnaError(f"{self.info.name}: {self.state.calls} of {self.layers} MLPs ran; model not supported")
        return out.last_hidden_state.reshape(-1, out.last_hidden_state.shape[-1])

    def _batches(self, samples, settings=None):
        rows = packing.plan_rows(list(samples), self.max_row_tokens, settings)
        return packing.plan_batches(rows, self.token_budget)

    @torch.inference_mode()
    def count(self, samples: Sequence[Sample], languages: Sequence[str]):
        samples = list(samples)
        lang_index = {lang: k for k, lang in enumerate(languages)}
        counts = torch.zeros(self.layers, len(languages), self.neurons, dtype=torch.int64, device=self.device)
        tokens = np.zeros(len(languages), np.int64)
        try:
            for rows in self._batches(samples):
                batch = packing.build_batch(rows, samples, lang_index)
                self.state.counts = counts
                self.state.lang_ids = torch.from_numpy(batch.lang_ids).to(self.device)
                self._forward(batch)
                tokens += np.bincount(batch.lang_ids[batch.lang_ids >= 0], minlength=len(languages))
        finally:
            self.state.clear()
        expected = np.zeros(len(languages), np.int64)
        np.add.at(expected, [lang_index[s.lang] for s in samples], [len(s.response) for s in samples])
        if not np.array_equal(tokens, expected):
            raise LnaError(f"counted {tokens.tolist()} response tokens, expected {expected.tolist()}")
        return counts.cpu().numpy(), tokens

    @torch.inference_mode()
    def nll(self, samples: Sequence[Sample], masks: np.ndarray | None, mask_ids: Sequence[int]) -> np.ndarray:
        samples = list(samples)
        out = np.zeros(len(samples), np.float64)
        if masks is not None and len(masks):
            self.state.masks = torch.from_numpy(np.ascontiguousarray(np.asarray(masks, bool).transpose(1, 0, 2))).to(self.device)
        try:
            for rows in self._batches(samples, mask_ids):
                batch = packing.build_batch(rows, samples, {s.lang: 0 for s in samples})
                ids = torch.from_numpy(batch.mask_ids).to(self.device)
                self.state.mask_ids = ids if self.state.masks is not None and (ids >= 0).any() else None
                hidden = self._forward(batch)
                pred = torch.from_numpy(batch.pred).to(self.device)
                target = torch.from_numpy(batch.target).to(self.device)
                for sl in _slices(len(pred), 4096):  # bound the [positions, vocab] logits
                    logits = families.logits(self.model, self.family, hidden.index_select(0, pred[sl]))
                    nll = torch.nn.functional.cross_entropy(logits, target[sl], reduction="none")
                    np.add.at(out, batch.target_sample[sl], nll.double().cpu().numpy())
        finally:
            self.state.clear()
        return out

    @torch.inference_mode()
    def generate(self, prompts, *, n: int, temperature: float, top_p: float, max_new_tokens: int,
                 seed: int) -> list[list[list[int]]]:
        """Temperature 0 is greedy (argmax at every step); n > 1 needs temperature > 0."""
        from transformers import GenerationConfig

        if temperature <= 0 and n > 1:
            raise LnaError(f"greedy decoding (temperature 0) gives one response, not {n}: "
                           "use --samples 1 or a temperature above 0")
        tok = self.tokenizer
        eos = self.model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos if eos is not None else tok.eos_token_id])
        pad = tok.pad_token_id if tok.pad_token_id is not None else next(iter(eos))
        # Exactly the decoding asked for, as vLLM does with explicit SamplingParams: transformers
        # fills what is not passed from the model's generation_config.json (a repetition penalty
        # there makes "greedy" non-greedy) and from its global defaults (top-k 50).
        plain = GenerationConfig(eos_token_id=sorted(eos), pad_token_id=pad, bos_token_id=tok.bos_token_id)
        sampling = temperature > 0
        out = []
        per_batch = max(1, self.token_budget // max(1, n * (max(len(p) for p in prompts) + max_new_tokens)))
        saved, self.model.generation_config = self.model.generation_config, plain
        try:
            for start in range(0, len(prompts), per_batch):
                chunk = [list(p) for p in prompts[start:start + per_batch]]
                width = max(len(p) for p in chunk)  # left padding: generation continues every row
                ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=self.device)
                attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=self.device)
                torch.manual_seed(seed + start)  # batches are fixed, so a resumed run samples the same
                gen = self.model.generate(
                    input_ids=ids, attention_mask=attn, max_new_tokens=max_new_tokens, num_return_sequences=n,
                    pad_token_id=pad, do_sample=sampling,
                    **(dict(temperature=temperature, top_p=top_p, top_k=0) if sampling else {}),
                )[:, width:].tolist()
                for q in range(len(chunk)):
                    out.append([_until_eos(g, eos) for g in gen[q * n:(q + 1) * n]])
        finally:
            self.model.generation_config = saved
        return out


def _until_eos(ids: list[int], eos: set) -> list[int]:
    for i, t in enumerate(ids):
        if t in eos:
            return ids[:i]
    return ids


def _slices(n: int, size: int):
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]
