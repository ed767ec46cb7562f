"""`lna.count`: count the MLP activations of a loaded transformers model during your own code.

    with lna.count(model, langs=["en", "zh"]) as counter:
        with counter.language("zh", generated=True):   # the tokens generate feeds back
            model.generate(**batch, max_new_tokens=64)
        with counter.language(["en", "zh"]):             # one language per batch row
            model(**other_batch)
    counter.counts                                       # int64 [layer, language, neuron]
    counter.save("mine.zarr")                            # a count store: lna-identify, lna merge

Inside the block every decoder layer's MLP is the runners' own lna.runners.counting_mlp.CountingMLP:
the fused kernel computes the MLP's output and, in the same pass, counts gate > 0 (and sums
act(gate) with sums=True) per language into tables on the model's device; no activation is
kept. A forward pre-hook on the decoder gives each token of each forward its language:
- by default every token the forward's 2D attention_mask marks real (padding never counts),
  in its row's language, AND-ed with `mask` (bool [batch, seq]) where one is given;
- generated=True: only the tokens generate feeds back after the prompt, each row up to its
  first EOS (never counted) - lna-profile's rule for responses, by its own tracker
  (lna.runners.decode_count.Tracker); a forward with an empty cache starts a generation.
A forward with no language (several languages and no `counter.language` block) is refused;
`counter.language(None)` runs forwards uncounted. On exit, also by an exception, the
original MLPs are back and the hooks gone. Counting under lna.steer, or a second count of
the same model at once, is refused.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from lna.core.errors import LnaError

NO_LIMIT = 1 << 62  # generated=True: generate itself decides where a response ends
_ASK = object()  # no language given for a forward


class Counter:
    """What `lna.count` yields: a context manager; after the block `.counts` int64
    [layer, language, neuron], `.tokens` int64 [language], `.sums`/`.active_sums` float64
    (sums=True), `.store()` / `.save(path)`."""

    def __init__(self, model, langs, *, sums: bool = False, eos=None):
        self.model = model
        self.languages = [langs] if isinstance(langs, str) else list(langs or [])
        if not self.languages or not all(isinstance(x, str) and x for x in self.languages):
            raise LnaError("lna.count: give langs=, the language codes to count (e.g. ['en', 'zh'])")
        if len(set(self.languages)) != len(self.languages):
            raise LnaError(f"lna.count: langs lists a language twice: {self.languages}")
        self.with_sums = bool(sums)
        self._eos = eos
        self._current = (self.languages[0] if len(self.languages) == 1 else _ASK, None, False)
        self._active = self._done = False
        self._tables = None  # counts, tokens[, sums, active_sums]: device tensors while counting
        self._result = None  # the same as numpy arrays, after the block
        self._samples, self._pending, self._unrecorded, self._ways = [], [], set(), set()
        self._tracker = None
        self._calls = 0
        self._outer = (None, None)  # the outer model's input ids and attention mask, during its call

    # -- the block ------------------------------------------------------------------------
    def __enter__(self) -> "Counter":
        from lna.interventions.intervene import SteeredMLP, _family_of, _width
        from lna.models import families
        from lna.runners.base import eos_ids
        from lna.runners.counting_mlp import CountingMLP, CountingState

        if self._active:
            raise LnaError("lna.count: this counter is already counting (nested use); count in one block and "
                           "use counter.language(...) for each part")
        if self._done:
            raise LnaError("lna.count: this counter has finished; start a new lna.count(...) block")
        model = self.model
        family = _family_of(model)
        self._decoder = families.decoder(model)
        layers = self._decoder.layers
        for i, layer in enumerate(layers):
            if isinstance(layer.mlp, CountingMLP):
                raise LnaError("lna.count: this model is already being counted (nested lna.count); count in one "
                               "block and use counter.language(...) for each part")
            if isinstance(layer.mlp, SteeredMLP):
                raise LnaError(f"lna.count: layer {i}'s MLP is under lna.steer; counting under an intervention is "
                               "not supported: leave the lna.steer block first")
        name = _name(model)
        families.check(model, family, name)  # every MLP is down(act(gate) * up): else counts would lie
        devices = {p.device for layer in layers for p in layer.mlp.parameters()}
        if len(devices) != 1:
            raise LnaError(f"lna.count: {name} is spread over {len(devices)} devices; lna.count needs its "
                           "layers on one device")
        device = devices.pop()
        L, K = len(layers), len(self.languages)
        width = _width(layers[0].mlp, family)
        shape = (L, K, width)
        tables = [torch.zeros(shape, dtype=torch.int64, device=device),
                  torch.zeros(K, dtype=torch.int64, device=device)]
        if self.with_sums:  # float64: the kernel's fp32 partials add into it exactly, in any order
            tables += [torch.zeros(shape, dtype=torch.float64, device=device) for _ in range(2)]
        configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos = self._eos
        self._eos_set = eos_ids(configured, None) if eos is None else {int(eos)} if isinstance(eos, int) \
            else {int(t) for t in eos}
        self._tables, self._family, self._layers, self._name = tables, family, L, name
        self._state = CountingState()
        self._originals = [layer.mlp for layer in layers]
        act = families.kernel_kwargs(family)
        self._hooks = []
        try:
            for i, layer in enumerate(layers):
                layer.mlp = CountingMLP(layer.mlp, i, self._state, family, act)
            self._hooks = [self._decoder.register_forward_pre_hook(self._before, with_kwargs=True),
                           self._decoder.register_forward_hook(self._after)]
            if self._decoder is not model:  # the outer model's token ids, for a decoder fed embeddings
                self._hooks += [model.register_forward_pre_hook(self._outer_before, with_kwargs=True),
                                model.register_forward_hook(self._outer_after)]
        except BaseException:
            self._restore()
            raise
        self._active = True
        return self

    def __exit__(self, *exc) -> bool:
        try:
            if exc[0] is None:
                self._finish_generation()
                self._name_forwards()
        finally:
            self._restore()
            self._active, self._done = False, True
            self._result = [t.cpu().numpy() for t in self._tables]
            self._tables = None
        return False

    def _restore(self) -> None:
        for hook in self._hooks:
            hook.remove()
        for layer, mlp in zip(self._decoder.layers, self._originals):
            layer.mlp = mlp
        self._state.clear()

    @contextlib.contextmanager
    def language(self, langs, *, mask=None, generated: bool = False):
        """Forwards in this block count in `langs`: a code (every row), a list of codes (one
        per batch row; generate with num_return_sequences=n: one per generated row), or None
        (not counted). `mask` bool [batch, seq]: count only these positions (one forward's
        inputs); generated=True: only the tokens generate feeds back, up to EOS."""
        if langs is not None:
            for code in [langs] if isinstance(langs, str) else langs:
                if code not in self.languages:
                    raise LnaError(f"lna.count: {code!r} is not one of the counted languages "
                                   f"{', '.join(self.languages)}; add it to langs=")
        if generated and mask is not None:
            raise LnaError("lna.count: generated=True counts the fed-back tokens; a mask applies to plain forwards")
        saved, self._current = self._current, (langs, mask, generated)
        try:
            yield self
        finally:
            self._finish_generation()
            self._current = saved

    # -- per forward ----------------------------------------------------------------------
    def _before(self, module, args, kwargs):
        from lna.runners.decode_count import Tracker

        langs, mask, generated = self._current
        st = self._state
        st.index, st.calls = None, 0
        st.counts = st.lang_ids = st.sums = st.active_sums = None
        self._counting = False
        if langs is None:
            return
        if langs is _ASK:
            raise LnaError(f"lna.count: a forward ran with no language (counting {', '.join(self.languages)}); "
                           "run it inside `with counter.language(code):` (or counter.language(None) to skip it)")
        if torch.is_grad_enabled():
            raise LnaError("lna.count: the counting kernel computes no gradients; run the forward under "
                           "torch.no_grad() or torch.inference_mode() (generate does so itself)")
        ids, embeds = kwargs.get("input_ids", args[0] if args else None), kwargs.get("inputs_embeds")
        if ids is None and embeds is None:
            raise LnaError("lna.count: the decoder was called without input_ids or inputs_embeds")
        B, S = (ids if ids is not None else embeds).shape[:2]
        outer_ids, outer_attention = self._outer
        if ids is None and isinstance(outer_ids, torch.Tensor) and tuple(outer_ids.shape) == (B, S):
            # a multimodal wrapper embeds the tokens itself: its input ids name them
            ids = outer_ids
            kwargs = {**kwargs, "input_ids": ids}
        device = self._tables[0].device
        codes = [langs] * B if isinstance(langs, str) else list(langs)
        if len(codes) != B:
            raise LnaError(f"lna.count: {len(codes)} languages for a batch of {B} rows; give one per row "
                           "(generate with num_return_sequences=n: one per generated row) or one code")
        slots = torch.tensor([self.languages.index(c) for c in codes], dtype=torch.int32, device=device)
        sums = self._tables[2:]
        attention = kwargs.get("attention_mask")
        attention = attention if isinstance(attention, torch.Tensor) and attention.dim() == 2 else None
        if attention is None and isinstance(outer_attention, torch.Tensor) and outer_attention.dim() == 2 \
                and outer_attention.shape[0] == B:
            attention = outer_attention  # a wrapper that hands its decoder a 4D mask: the user's own
        if generated:
            if ids is None:
                raise LnaError("lna.count: generated=True needs the token ids (the model was fed inputs_embeds)")
            if kwargs.get("use_cache") is False:  # every step would look like a new prompt: nothing counted
                raise LnaError("lna.count: generated=True follows generate's KV cache; do not pass use_cache=False")
            if self._tracker is None or _past(kwargs, attention, S) == 0:  # a new generation: this is its prompt
                self._finish_generation()
                self._tracker = Tracker(st, self._tables[0], slots.tolist(), S, NO_LIMIT, self._eos_set,
                                        self._layers, sums)
                host = ids.cpu()
                real = attention.cpu() != 0 if attention is not None else torch.ones(B, S, dtype=torch.bool)
                self._prompt = [tuple(host[r][real[r]].tolist()) for r in range(B)], codes
            self._tracker.before(module, (), {"input_ids": ids})  # sets st.lang_ids, st.counts, st.sums
            lang = st.lang_ids
        else:
            valid = (attention[:, -S:] != 0) if attention is not None else torch.ones(B, S, dtype=torch.bool,
                                                                                        device=device)
            if mask is not None:
                mask = torch.as_tensor(mask)
                if tuple(mask.shape) != (B, S):
                    raise LnaError(f"lna.count: mask is {tuple(mask.shape)}, the forward's inputs are ({B}, {S})")
                valid = valid.to(device) & mask.to(device=device, dtype=torch.bool)
            valid = valid.to(device)
            lang = torch.where(valid, slots[:, None], -1).reshape(-1).to(torch.int32)
            st.counts, st.lang_ids = self._tables[0], lang
            st.sums, st.active_sums = sums if sums else (None, None)
            self._record_forward(ids, valid, attention, codes)
        self._tables[1].index_add_(0, lang.clamp(min=0).long(), (lang >= 0).long())
        self._counting = True
        self._ways.add("sampling" if generated else "force-decoding")

    def _outer_before(self, module, args, kwargs):
        self._outer = kwargs.get("input_ids", args[0] if args else None), kwargs.get("attention_mask")

    def _outer_after(self, module, args, output):
        self._outer = (None, None)

    def _after(self, module, args, output):
        st = self._state
        calls, counting = st.calls, self._counting
        st.counts = st.lang_ids = st.sums = st.active_sums = None
        self._counting = False
        if counting and calls != self._layers:  # an MLP replaced or bypassed inside the block
            raise LnaError(f"lna.count: {calls} of {self._layers} MLPs counted in a forward (were they replaced "
                           "inside the block, e.g. by lna.steer?); counting under an intervention is not supported")

    # -- which samples were counted (a store's manifest: lna merge refuses double counting) --
    def _record_forward(self, ids, valid, attention, codes) -> None:
        """Keep the forward's token ids and counted positions (on the device: no sync per
        forward) to name its samples after the block."""
        if ids is None:  # embeddings only: no token ids to name the samples by
            self._unrecorded.update(codes)
            return
        self._calls += 1
        real = attention[:, -ids.shape[1]:] != 0 if attention is not None else torch.ones_like(valid)
        self._pending.append((self._calls, ids.detach().clone(), valid.clone(), real.to(valid.device), codes))

    def _name_forwards(self) -> None:
        """Each counted row of a forward is a sample: the counted tokens are its response, the
        real tokens before them its prompt where the counted ones are the whole real tail (how
        lna-profile names a prompt and response), else all its real tokens."""
        from lna.inputs.samples import Sample

        pending, self._pending = self._pending, []
        for call, ids, valid, real, codes in pending:
            ids, valid, real = ids.cpu(), valid.cpu(), real.cpu()
            for r, code in enumerate(codes):
                counted = torch.nonzero(valid[r]).flatten()
                if not len(counted):
                    continue
                first = int(counted[0])
                tail, before = real[r].clone(), real[r].clone()
                tail[:first], before[first:] = False, False
                prompt = ids[r][before] if torch.equal(tail, valid[r]) else ids[r][real[r]]
                self._samples.append(Sample(f"count/{call}/{r}", code, tuple(prompt.tolist()),
                                            tuple(ids[r][valid[r]].tolist()), group=f"count/{call}"))

    def _finish_generation(self) -> None:
        from lna.inputs.samples import Sample

        tracker, self._tracker = self._tracker, None
        if tracker is None or not tracker.fed:
            return
        self._calls += 1
        fed, counted = torch.cat(tracker.fed, 1).cpu(), torch.cat(tracker.counted, 1).cpu()
        prompts, codes = self._prompt
        for r, (prompt, code) in enumerate(zip(prompts, codes)):
            response = tuple(fed[r][counted[r]].tolist())
            if response:
                self._samples.append(Sample(f"count/{self._calls}/{r}", code, prompt, response,
                                            group=f"count/{self._calls}"))

    # -- results --------------------------------------------------------------------------
    def _tables_now(self) -> list:
        if self._result is not None:
            return self._result
        if self._tables is None:
            raise LnaError("lna.count: nothing counted yet; use the counter in a `with` block")
        return [t.cpu().numpy() for t in self._tables]

    @property
    def counts(self) -> np.ndarray:
        """int64 [layer, language, neuron]: counted tokens on which each neuron's gate was > 0."""
        return self._tables_now()[0]

    @property
    def tokens(self) -> np.ndarray:
        """int64 [language]: tokens counted."""
        return self._tables_now()[1]

    @property
    def sums(self) -> np.ndarray | None:
        """float64 [layer, language, neuron]: act(gate) summed over the counted tokens (sums=True)."""
        return self._tables_now()[2] if self.with_sums else None

    @property
    def active_sums(self) -> np.ndarray | None:
        """float64 [layer, language, neuron]: the same over the tokens with gate > 0 (sums=True)."""
        return self._tables_now()[3] if self.with_sums else None

    def store(self, **meta):
        """The counts as a Store (lna.api.store; save it, identify it, merge it). `meta`
        overrides the recorded metadata (model, dataset, template, ...). The samples are
        recorded by content, so lna merge refuses a store that counted any of them already."""
        from lna.api.store import Store
        from lna.storage.manifest import Counted, sample_ids
        from lna.storage.counts import CountStore, counted_during

        if self._active:
            raise LnaError("lna.count: call store() after the `with` block")
        counts, tokens, *sums = self._tables_now()
        ids = sample_ids(self._samples)
        samples = {}
        for s, i in zip(self._samples, ids.tolist()):
            if s.lang not in self._unrecorded:
                samples.setdefault(s.lang, Counted()).add([i], [s.key])
        info = {**self._model_meta(), "counted_during": counted_during(*sorted(self._ways))}
        info.update(meta)
        store = CountStore(counts, tokens, self.languages, info, samples, True,
                           *(sums if self.with_sums else ()))
        return Store.of(store)

    def save(self, path, **meta):
        """store(**meta) written to `path` (atomically); returns the Store."""
        return self.store(**meta).save(path)

    def _model_meta(self) -> dict:
        from lna.models import fingerprint, loading

        net = self.model
        name = self._name
        try:  # the identity of the files the model was loaded from, as lna-profile records it
            info = loading.resolve(name)
            ident, legacy, revision = fingerprint.of(info), fingerprint.legacy(info), info.revision
        except (LnaError, OSError):
            ident, legacy, revision = fingerprint.UNSAVED, None, None
        weight = net.get_input_embeddings().weight
        arch = (getattr(net.config, "architectures", None) or [type(net).__name__])[0]
        return {"model": name, "model_name": loading.display_name(name), "model_fingerprint": ident,
                "model_fingerprint_legacy": legacy, "revision": revision, "architecture": arch,
                "family": self._family.name, "dtype": str(weight.dtype).removeprefix("torch."), "backend": "hf",
                "dataset": "lna.count", "template": "verbatim", "template_text": "", "provenance": "profile"}

    def __repr__(self) -> str:
        from lna.models.loading import display_name

        state = "counting" if self._active else "finished" if self._done else "not started"
        text = f"<lna.count {display_name(_name(self.model))}: {', '.join(self.languages)}; {state}"
        if self._active or self._done:
            text += "; tokens " + ", ".join(f"{c} {int(n):,}" for c, n in zip(self.languages, self.tokens))
        return text + (", with sums>" if self.with_sums else ">")


def count(model, langs, *, sums: bool = False, eos=None) -> Counter:
    """Count activations of `model` (a loaded transformers causal LM of a family lna supports)
    during the forwards and generates run inside `with lna.count(model, langs) as counter:`,
    per language (see this module's docstring). sums=True also sums act(gate); eos: the token
    ids that end a response for generated=True (default: the model's generation config)."""
    return Counter(model, langs, sums=sums, eos=eos)


def _name(model) -> str:
    return getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", "") \
        or type(model).__name__


def _past(kwargs, attention, steps: int) -> int:
    """Tokens already in the cache before this forward (0: a new sequence)."""
    for key in ("past_key_values", "cache"):
        cache = kwargs.get(key)
        if cache is not None and hasattr(cache, "get_seq_length"):
            return int(cache.get_seq_length())
    if attention is not None:
        return attention.shape[1] - steps
    position = kwargs.get("cache_position")
    return int(position[0]) if isinstance(position, torch.Tensor) and position.numel() else 0
