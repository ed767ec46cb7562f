"""The transformers runner: counting MLPs installed into an unmodified HF model.

Each decoder layer's MLP is replaced by lna.runners.counting_mlp.CountingMLP, which counts
gate > 0 per language in the same pass as the MLP, or applies interventions.
Batches are shared-prompt packed rows (lna.runners.packing), run on their real tokens only
with per-segment attention (lna.runners.packed_attention; where a model's attention cannot
run that way, as a padded batch with a 4D mask whose padding the MLPs gather out), so no
padded token is ever computed through the MLPs or counted.
"""
from typing import Sequence

import numpy as np
import torch
from torch import nn

from lna.models import families, fingerprint, loading
from lna.core import threads
from lna.core.errors import LnaError
from lna.runners import decode_count, packed_attention, packing
from lna.runners.counting_mlp import CountingMLP, CountingState
from lna.runners.base import check_decoding, check_interventions, eos_ids, language_slots
from lna.inputs.samples import Sample, sample_seeds
from lna.runners.row_sampler import RowSampler

MASK_TYPES = ("full_attention", "sliding_attention")  # attention types a packed batch can mask


class HFRunner:
    """Force-decoding with transformers: `count`, `generate` and `nll` of the Runner protocol."""

    streams_progress = True  # generate(progress=f) calls f at every decoding step (lna.inputs.responses)

    def __init__(self, model: str, *, device: str = "cpu", dtype: str = "float32",
                 token_budget: int = 8192, max_row_tokens: int = 2048, revision: str | None = None,
                 info: loading.ModelInfo | None = None):
        info = info or loading.resolve(model, revision)  # given: resolved once per run (lna.runners.options)
        if str(device) == "cpu":
            threads.fit_to_load()  # no more threads than the cores other work leaves free
        # From the files, not the loaded tensors: the same for every backend and dtype (hashed while they load).
        with fingerprint.hashing(info) as identity:
            net, tokenizer = loading.load(info, device=device, dtype=dtype)
        strong, weak = identity.result()
        self._setup(net, tokenizer, info, strong, token_budget, max_row_tokens, weak)

    @classmethod
    def wrap(cls, net, tokenizer, info: loading.ModelInfo, *, token_budget: int = 8192,
             max_row_tokens: int = 2048) -> "HFRunner":
        """A runner around a model built in memory (benches: random 7B weights, never saved);
        its identity is "unsaved", which matches no store or neuron set."""
        self = cls.__new__(cls)
        self._setup(net, tokenizer, info, fingerprint.UNSAVED, token_budget, max_row_tokens)
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
                           f"lna supports {loading.SUPPORTED}")
        self.state = CountingState()
        self.eos = eos_ids(net.generation_config.eos_token_id, tokenizer)
        self.counting_modules = self._install(info)
        self.run_batch = packed_attention.Forward(self.decoder, text, self.layers, self.layer_types,
                                                  self.sliding_window, self.dtype, self.device)

    def _install(self, info) -> int:
        """Put the counting modules into the model; returns how many run per forward."""
        act = families.kernel_kwargs(info.family)
        for i, layer in enumerate(self.decoder.layers):
            layer.mlp = CountingMLP(layer.mlp, i, self.state, info.family, act)
        return self.layers

    # -- one packed forward -----------------------------------------------------------
    def _forward(self, batch: packing.Batch):
        """Hidden states after the final norm, with the state set for the MLPs, and the rows
        of them that batch.pred names (lna.runners.packed_attention)."""
        self.state.calls = 0
        hidden, pred = self.run_batch(batch, self.state)
        if self.state.calls != self.counting_modules:  # a layer bypassed its MLP: counts would be wrong
            raise LnaError(f"{self.info.name}: {self.state.calls} of {self.counting_modules} MLPs ran; "
                           "model not supported")
        return hidden, pred

    def _batches(self, samples, settings=None):
        rows = packing.plan_rows(list(samples), self.max_row_tokens, settings)
        return packing.plan_batches(rows, self.token_budget)

    @torch.inference_mode()
    def count(self, samples: Sequence[Sample], languages: Sequence[str], *, sums: bool = False):
        samples = list(samples)
        lang_index = {lang: k for k, lang in enumerate(languages)}
        shape = (self.layers, len(languages), self.neurons)
        counts = torch.zeros(shape, dtype=torch.int64, device=self.device)
        # float64: the kernel's fp32 partial sums add into it exactly, in any order.
        tables = [torch.zeros(shape, dtype=torch.float64, device=self.device) for _ in range(2)] if sums else None
        tokens = np.zeros(len(languages), np.int64)
        nonfinite = torch.zeros(self.layers, dtype=torch.int32, device=self.device)
        try:
            for rows in self._batches(samples):
                self.state.nonfinite = nonfinite
                batch = packing.build_batch(rows, samples, lang_index)
                self.state.counts = counts
                if tables:
                    self.state.sums, self.state.active_sums = tables
                self.state.lang_ids = torch.from_numpy(batch.lang_ids).to(self.device)
                self._forward(batch)
                tokens += np.bincount(batch.lang_ids[batch.lang_ids >= 0], minlength=len(languages))
        finally:
            self.state.clear()
        self._check_finite(nonfinite)
        expected = np.zeros(len(languages), np.int64)
        np.add.at(expected, [lang_index[s.lang] for s in samples], [len(s.response) for s in samples])
        if not np.array_equal(tokens, expected):
            raise LnaError(f"counted {tokens.tolist()} response tokens, expected {expected.tolist()}")
        if tables:
            return (counts.cpu().numpy(), tokens, *(t.cpu().numpy() for t in tables))
        return counts.cpu().numpy(), tokens

    def _check_finite(self, nonfinite) -> None:
        """Stop where a layer met NaN or Inf gates (the kernels' flag, read with the counts):
        every later layer's counts and sums would be wrong, silently."""
        bad = torch.nonzero(nonfinite).flatten().tolist()
        if bad:
            dtype = str(self.dtype).removeprefix("torch.")
            raise LnaError(f"{self.info.name}: NaN or Inf gate activations in layer {bad[0]} (the first; "
                           f"{len(bad)} layers have them) while counting, so the counts would be wrong; check the "
                           f"model's weights for NaN/Inf, or compute in another --dtype (now {dtype})")

    def _interventions(self, masks, values, offsets=None) -> None:
        """Put masks bool [n_masks, layer, neuron] (and values float32, same shape, or None:
        zero; offsets float32, same shape, added to act(gate) after, or None) on the device,
        per layer, for the MLPs."""
        self.state.clear()
        if masks is None or not len(masks):
            return
        masks, values = check_interventions(masks, values, self.layers, self.neurons)
        if offsets is not None:
            offsets = np.ascontiguousarray(offsets, dtype=np.float32)
            if offsets.shape != masks.shape:
                raise LnaError(f"offsets must be shaped like masks {masks.shape}, got {offsets.shape}")
        by_layer = (lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(1, 0, 2))).to(self.device))
        self.state.masks = by_layer(masks)
        self.state.values = None if values is None else by_layer(values)
        self.state.offsets = None if offsets is None else by_layer(offsets)

    @torch.inference_mode()
    def nll(self, samples: Sequence[Sample], masks: np.ndarray | None, mask_ids: Sequence[int],
            values: np.ndarray | None = None, offsets: np.ndarray | None = None) -> np.ndarray:
        samples = list(samples)
        out = np.zeros(len(samples), np.float64)
        self._interventions(masks, values, offsets)
        try:
            for rows in self._batches(samples, mask_ids):
                batch = packing.build_batch(rows, samples, {s.lang: 0 for s in samples})
                ids = torch.from_numpy(batch.mask_ids).to(self.device)
                self.state.mask_ids = ids if self.state.masks is not None and (ids >= 0).any() else None
                hidden, pred = self._forward(batch)
                pred = torch.from_numpy(pred).to(self.device)
                target = torch.from_numpy(batch.target).to(self.device)
                for sl in _slices(len(pred), 2048):  # bound the [positions, vocab] logits (and their float64 copy)
                    logits = families.logits(self.model, self.family, hidden.index_select(0, pred[sl]))
                    # the loss in float64: fp32's log-sum-exp reads 1e-5 relative low over a sum of tokens
                    nll = torch.nn.functional.cross_entropy(logits.double(), target[sl], reduction="none")
                    np.add.at(out, batch.target_sample[sl], nll.double().cpu().numpy())
        finally:
            self.state.clear()
        return out

    def generate(self, prompts, *, n: int, temperature: float, top_p: float, max_new_tokens: int,
                 seed: int | Sequence[int], masks: np.ndarray | None = None, values: np.ndarray | None = None,
                 mask_ids: Sequence[int] | None = None, offsets: np.ndarray | None = None,
                 progress=None) -> list[list[list[int]]]:
        """Temperature 0 is greedy (argmax at every step); n > 1 needs temperature > 0.
        Interventions: prompt i is generated (every token, its own included) with
        masks[mask_ids[i]] zeroed, or set to values[mask_ids[i]] (-1: none), and then
        offsets[mask_ids[i]] added to every activation (transformers backend only); prompts
        with different interventions share batches. progress(x): called at every decoding
        step with the prompts' worth of work done since the last call (fractions;
        len(prompts) in all), so a bar moves while a batch generates."""
        return self._generate(prompts, None, None, n=n, temperature=temperature, top_p=top_p,
                              max_new_tokens=max_new_tokens, seed=seed, masks=masks, values=values,
                              mask_ids=mask_ids, offsets=offsets, progress=progress)[0]

    def generate_counting(self, prompts, langs, languages, *, n: int, temperature: float, top_p: float,
                          max_new_tokens: int, seed: int | Sequence[int], sums: bool = False, progress=None):
        """`generate`, counting each response token when it is fed back (lna.runners.base)."""
        language_slots(langs, languages, len(prompts))
        return self._generate(prompts, list(langs), list(languages), n=n, temperature=temperature, top_p=top_p,
                              max_new_tokens=max_new_tokens, seed=seed, sums=sums, progress=progress)

    @torch.inference_mode()
    def _generate(self, prompts, langs, languages, *, n, temperature, top_p, max_new_tokens, seed, masks=None,
                  values=None, mask_ids=None, sums=False, offsets=None, progress=None):
        """transformers' generate with static left-padded batches of whole prompts. Counting
        (langs given): a pre-hook on the model sees the tokens of every forward and gives each
        fed response token its language (lna.runners.decode_count); one step more than
        max_new_tokens feeds the last kept token, and its sampled token is dropped."""
        from transformers import GenerationConfig, LogitsProcessorList

        check_decoding(temperature, n)
        tok, eos = self.tokenizer, self.eos
        if not eos:
            raise LnaError(f"{self.info.name}: its tokenizer and generation config name no EOS token, so a sampled "
                           "response would never end; give responses with the data")
        pad = tok.pad_token_id if tok.pad_token_id is not None else min(eos)
        # Exactly the decoding asked for, as vLLM does with explicit SamplingParams: transformers
        # fills what is not passed from the model's generation_config.json (a repetition penalty
        # there makes "greedy" non-greedy) and from its global defaults (top-k 50).
        plain = GenerationConfig(eos_token_id=sorted(eos), pad_token_id=pad, bos_token_id=tok.bos_token_id)
        sampling = temperature > 0
        counting = langs is not None
        out = []
        if counting:
            slot = language_slots(langs, languages, len(prompts))
            shape = (self.layers, len(languages), self.neurons)
            counts = torch.zeros(shape, dtype=torch.int64, device=self.device)
            # float64: the kernel's fp32 partial sums add into it exactly, in any order.
            tables = [torch.zeros(shape, dtype=torch.float64, device=self.device) for _ in range(2)] if sums else []
            tokens = np.zeros(len(languages), np.int64)
            nonfinite = torch.zeros(self.layers, dtype=torch.int32, device=self.device)
        seeds = sample_seeds(seed, len(prompts), n)
        per_batch = max(1, self.token_budget // max(1, n * (max(len(p) for p in prompts) + max_new_tokens)))
        # Even batches under the budget: 8 prompts at 6 per batch go as 4 + 4, not 6 + 2 (a
        # decoding step costs about the same at 2 rows as at 4).
        per_batch = -(-len(prompts) // -(-len(prompts) // per_batch))
        if mask_ids is not None and len(mask_ids) != len(prompts):
            raise LnaError(f"mask_ids must give one id per prompt ({len(prompts)}), got {len(mask_ids)}")
        self._interventions(masks, values, offsets)
        if counting:
            self.state.nonfinite = nonfinite  # after _interventions, which clears the state
        ids_of = None
        if self.state.masks is not None and mask_ids is not None:
            ids_of = np.asarray(mask_ids, np.int64)
            if ((ids_of < -1) | (ids_of >= self.state.masks.shape[1])).any():
                raise LnaError(f"mask_ids must lie in [-1, {self.state.masks.shape[1]})")
        saved, self.model.generation_config = self.model.generation_config, plain
        try:
            for start in range(0, len(prompts), per_batch):
                chunk = [list(p) for p in prompts[start:start + per_batch]]
                if ids_of is not None:  # one id per generated row (each prompt's n rows in a run)
                    rows = np.repeat(ids_of[start:start + per_batch], n)
                    steered = (rows >= 0).any()
                    self.state.row_ids = torch.from_numpy(rows.astype(np.int32)).to(self.device) if steered else None
                width = max(len(p) for p in chunk)  # left padding: generation continues every row
                ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=self.device)
                attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=self.device)
                tracker = hook = None
                if counting:  # rows are prompt-major: n responses of prompt 0, then of prompt 1, ...
                    row_slots = [slot[lang] for lang in langs[start:start + len(chunk)] for _ in range(n)]
                    tracker = decode_count.Tracker(self.state, counts, row_slots, width, max_new_tokens, eos,
                                                   self.layers, tables)
                    hook = self.model.register_forward_pre_hook(tracker.before, with_kwargs=True)
                    post = self.model.register_forward_hook(tracker.after)
                draw = {}
                if sampling:  # each response from its own seed (lna.runners.row_sampler); generate's warpers off
                    rows = [seeds[start + q] + k for q in range(len(chunk)) for k in range(n)]
                    sampler = RowSampler(rows, max_new_tokens + counting, width, temperature, top_p, self.device)
                    draw = dict(temperature=1.0, top_p=1.0, top_k=0, logits_processor=LogitsProcessorList([sampler]))
                ticker = None
                if progress is not None:
                    ticker = _Ticker(progress, len(chunk), max_new_tokens + counting)
                    draw.setdefault("logits_processor", LogitsProcessorList()).append(ticker)
                try:
                    gen = self.model.generate(
                        input_ids=ids, attention_mask=attn, max_new_tokens=max_new_tokens + counting,
                        num_return_sequences=n, pad_token_id=pad, do_sample=sampling, **draw,
                    )[:, width:width + max_new_tokens].tolist()
                finally:
                    if hook is not None:
                        hook.remove()
                        post.remove()
                        tracker.detach()
                if ticker is not None:
                    ticker.finish()
                responses = [_until_eos(g, eos) for g in gen]
                if counting:
                    tracker.check(responses, self.info.name)
                    np.add.at(tokens, row_slots, [len(r) for r in responses])
                for q in range(len(chunk)):
                    out.append(responses[q * n:(q + 1) * n])
        finally:
            self.model.generation_config = saved
            self.state.clear()
        if counting:
            self._check_finite(nonfinite)
            return (out, counts.cpu().numpy(), tokens, *(t.cpu().numpy() for t in tables))
        return out, None, None


class _Ticker:
    """A logits processor that leaves the scores alone and reports progress at every decoding
    step: `prompts` prompts' worth over at most `steps` steps, the rest when the batch ends
    (early when every row has stopped)."""

    def __init__(self, progress, prompts: int, steps: int):
        self.progress, self.prompts, self.step, self.done = progress, prompts, prompts / max(1, steps), 0.0

    def __call__(self, input_ids, scores):
        if self.done + self.step < self.prompts:
            self.done += self.step
            self.progress(self.step)
        return scores

    def finish(self):
        if self.prompts > self.done:
            self.progress(self.prompts - self.done)
        self.done = self.prompts


def _until_eos(ids: list[int], eos: set) -> list[int]:
    for i, t in enumerate(ids):
        if t in eos:
            return ids[:i]
    return ids


def _slices(n: int, size: int):
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]
