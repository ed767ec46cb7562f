"""The part of the vLLM backend that runs inside vLLM's workers (one per tensor-parallel rank).

vLLM mixes `LnaWorkerExtension` into its worker class (`worker_extension_cls`), so every
rank, in-process or in its own process, gets these methods, and the runner calls them by
name with `llm.collective_rpc`:
- `lna_install()` swaps the activation (`act_fn`: vLLM's `SiluAndMul`, or `GeluAndMul`
  with the tanh approximation for Gemma) of every gated MLP for `CountingActAndMul`, which
  calls lna's fused kernel, and wraps the model runner's `_model_forward`
  (lna.runners.vllm_steps) so that each scheduled step first works out, from the step's
  requests, the slot (language or mask) of every token. vLLM's own model classes and its
  Transformers backend (which fuses a Hugging Face MLP into the same gate_up_proj + act_fn)
  both have this layout.
- `lna_begin(...)` / `lna_end()` open and close one count, nll or generate call; `lna_end`
  returns the rank's counts and activation sums (bytes) and the bookkeeping that the
  runner checks. In generate mode each request's tokens (prompt and generated) carry the
  request's intervention id: a neuron passes, is zeroed or is set to a value. Counting while
  sampling is a count call around generation (lna.runners.vllm).
Which request a token belongs to comes from the model runner's persistent batch (the
order in which it lays requests out, their computed-token offsets and scheduled lengths)
and the request's own `SamplingParams.extra_args`, never from the tokens themselves.
Forward passes that do not come from the scheduler (profiling, warm-up, dummy runs) never
go through `_model_forward`, so they are never counted.

The activations are swapped when the model has loaded, before vLLM compiles or captures
anything (importing this module, which vLLM does in every worker before loading, wraps the
model runner's `load_model` for engines with lna's extension only). Counting goes through
the custom op of lna.runners.vllm_op with per-layer buffers that live as long as the
engine, so it works eagerly (enforce_eager, the default) and under vLLM's torch.compile
and CUDA graphs (enforce_eager=False: counting only; interventions need eager mode).
"""
import re

import numpy as np
import torch
from torch import nn

from lna.runners import vllm_op  # noqa: F401  (registers torch.ops.lna.act_and_mul_count)
from lna.runners.vllm_batch import Tracker
from lna.runners.vllm_steps import planned_forward


SLOTS = 16  # languages one count call can hold (buffers are fixed: compiled graphs read them)


class CountingActAndMul(nn.Module):
    """SiluAndMul / GeluAndMul on the packed [T, 2I] gate_up that also counts or masks, per token.

    Counting: the custom op lna::act_and_mul_count with this layer's persistent buffers
    (`lna_counts`, `lna_sums`, `lna_active_sums`, `lna_tally`) and the step's slot ids
    (`lna_ids`, shared by all layers); interventions (nll, generate): masks per call, eager.
    Eagerly, outside an lna call, it is vLLM's own op; compiled, it is always the custom op
    (with every id -1 it counts nothing), since a branch would be frozen at trace time."""

    def __init__(self, layer: int, state: "_State", plain: nn.Module, activation: str, ids: torch.Tensor,
                 width: int, compiled: bool):
        super().__init__()
        self.layer, self.state, self.compiled = layer, state, compiled
        self.plain = plain  # vLLM's own op, used outside of lna calls (generation)
        self.activation = activation
        self.act = {} if activation == "silu" else {"activation": activation}
        self.register_buffer("lna_ids", ids, persistent=False)
        self.register_buffer("lna_counts", torch.zeros(SLOTS, width, dtype=torch.int64, device=ids.device),
                             persistent=False)
        for name in ("lna_sums", "lna_active_sums"):  # float64: the kernel's fp32 partials add in exactly
            self.register_buffer(name, torch.zeros(SLOTS, width, dtype=torch.float64, device=ids.device),
                                 persistent=False)
        self.register_buffer("lna_tally", torch.zeros(1, dtype=torch.int64, device=ids.device), persistent=False)

    def forward(self, x):
        if not self.compiled:
            st = self.state
            if st.mode is None or not st.rows:  # not a step of an lna call (generation, warm-up)
                return self.plain(x)
            tokens = x.shape[:-1].numel()
            if tokens != st.rows:
                raise RuntimeError(f"lna: layer {self.layer} got {tokens} tokens but the step "
                                   f"planned {st.rows}; this vLLM version lays out batches "
                                   f"differently from what lna supports")
            if st.mode != "count":  # nll or generate: interventions
                from lna.kernels import silu_mul_packed

                layer = self.layer
                st.calls[layer] += 1
                if st.masks is None:
                    return silu_mul_packed(x, **self.act)
                ids = self.lna_ids[:tokens].view(x.shape[:-1])  # the Transformers backend keeps a batch dim of 1
                return silu_mul_packed(x, masks=st.masks[layer], mask_ids=ids, check_ids=False,
                                       values=None if st.values is None else st.values[layer], **self.act)
        # Compiled, the sums are always taken (a flag would be frozen at trace time).
        return torch.ops.lna.act_and_mul_count(x, self.lna_ids, self.lna_counts, self.lna_sums,
                                               self.lna_active_sums, self.lna_tally, self.activation,
                                               self.compiled or self.state.sums)


class _State:
    """What one rank knows about the lna call in progress (None between calls)."""

    def __init__(self):
        self.mode = None  # "count" | "nll" | "generate" | None
        self.rows = 0  # rows of the planned step in flight (0: none; eager mode checks the layout against it)
        self.ids = None  # int32 [capacity] slot per token of the step in flight (-1: none), persistent
        self.modules = []  # the CountingActAndMul of every layer, in layer order
        self.compiled = False  # the engine compiles (enforce_eager=False)
        self.calls = []  # per layer: steps in which it intervened (eager nll, generate)
        self.planned = 0  # tokens the call's steps planned to count (every layer must count them)
        self.steps = 0  # planned steps of the call
        self.n_slots = 0
        self.sums = False  # count: activation sums too
        self.masks = None  # bool [layer][n_masks, neurons of this rank]
        self.values = None  # float32 [layer][n_masks, neurons of this rank]: set, not zero (None: zero)
        self.nll = None  # float64 [samples]
        self.tracker = None
        self.errors = []
        self.has_logits = False  # this rank received logits (tensor parallel gathers to one)
        self.layers = self.width = self.device = None  # set by install


def activation_of(act: nn.Module) -> str | None:
    """lna.kernels' name for a vLLM act-and-mul op lna computes exactly, else None."""
    from vllm.model_executor.layers.activation import GeluAndMul, SiluAndMul

    if isinstance(act, CountingActAndMul):
        act = act.plain
    if type(act) is SiluAndMul:
        return "silu"
    if type(act) is GeluAndMul and getattr(act, "approximate", None) == "tanh":
        return "gelu_tanh"
    return None


def _gated_mlps(model: nn.Module):
    """(layer index, mlp, activation) of every MLP computing act(gate) * up from a packed gate_up."""
    found = []
    for name, module in model.named_modules():
        act = getattr(module, "act_fn", None)
        if getattr(module, "gate_up_proj", None) is None or act is None:
            continue
        activation = activation_of(act)
        if activation is None:
            continue
        m = re.search(r"layers\.(\d+)\.", name + ".")
        if m is None:
            raise RuntimeError(f"lna: cannot tell the layer of the gated MLP {name!r}")
        found.append((int(m.group(1)), module, activation))
    return sorted(found, key=lambda t: t[0])


def install(runner) -> "_State":
    """Swap the activation of every gated MLP of the runner's model for CountingActAndMul and
    wrap `_model_forward` (once); the rank's state. Called right after the model loads (see
    the module docstring), or by lna_install where that hook did not run (eager mode only)."""
    state = getattr(runner, "_lna", None)
    if state is not None:
        return state
    mlps = _gated_mlps(runner.get_model())
    layers = [layer for layer, _, _ in mlps]
    if not mlps or layers != list(range(len(mlps))):
        raise RuntimeError(f"lna: expected one gated MLP (SiLU or GELU-tanh) per layer, found layers {layers}")
    widths = {mlp.gate_up_proj.output_size_per_partition // 2 for _, mlp, _ in mlps}
    if len(widths) != 1:
        raise RuntimeError(f"lna: MLP widths differ between layers: {sorted(widths)}")
    state = _State()
    state.layers, state.width = len(mlps), min(widths)
    state.device = next(runner.get_model().parameters()).device
    state.compiled = not runner.vllm_config.model_config.enforce_eager
    capacity = max(runner.max_num_tokens, runner.vllm_config.scheduler_config.max_num_batched_tokens)
    state.ids = torch.full((capacity,), -1, dtype=torch.int32, device=state.device)
    for layer, mlp, activation in mlps:
        mlp.act_fn = CountingActAndMul(layer, state, mlp.act_fn, activation, state.ids, state.width, state.compiled)
        state.modules.append(mlp.act_fn)
    runner._model_forward = planned_forward(runner, runner._model_forward, state)
    runner._lna = state
    return state


def _install_on_load(load_model):
    """GPUModelRunner.load_model (and the CPU runner's), then `install` for lna's engines."""
    import functools

    @functools.wraps(load_model)
    def loaded(self, *args, **kwargs):
        out = load_model(self, *args, **kwargs)
        if self.vllm_config.parallel_config.worker_extension_cls == EXTENSION:
            install(self)
        return out

    loaded.lna_wrapped = True
    return loaded


def _hook_model_runners():
    """Wrap load_model of vLLM's model runners in this process (once; see the module docstring)."""
    runners = []
    try:
        from vllm.v1.worker.gpu_model_runner import GPUModelRunner
        runners.append(GPUModelRunner)
        from vllm.v1.worker.cpu_model_runner import CPUModelRunner
        runners.append(CPUModelRunner)
    except ImportError:  # a build without one of them: the other is hooked
        pass
    for cls in runners:
        if "load_model" in vars(cls) and not getattr(cls.load_model, "lna_wrapped", False):
            cls.load_model = _install_on_load(cls.load_model)


EXTENSION = "lna.runners.vllm_worker.LnaWorkerExtension"


class LnaWorkerExtension:
    """Methods added to each vLLM worker; called through `llm.collective_rpc(name, ...)`."""

    def lna_install(self) -> dict:
        from vllm.distributed import (get_pp_group, get_tensor_model_parallel_rank,
                                      get_tensor_model_parallel_world_size)

        runner = self.model_runner
        missing = [a for a in ("_model_forward", "input_batch", "requests", "query_start_loc", "max_num_tokens")
                   if not hasattr(runner, a)]
        if missing:
            raise RuntimeError(f"lna: vLLM's model runner {type(runner).__name__} lacks {missing}; "
                               f"lna supports the V1 model runner (VLLM_USE_V2_MODEL_RUNNER=0)")
        if get_pp_group().world_size > 1:
            raise RuntimeError("lna: pipeline parallelism is not supported; use tensor parallelism")
        if getattr(runner, "_lna", None) is None and not runner.vllm_config.model_config.enforce_eager:
            raise RuntimeError("lna: the counting activation was not installed before vLLM compiled the model "
                               "(this vLLM loads models another way); run with enforce_eager=True")
        state = install(runner)
        mlps = _gated_mlps(runner.get_model())
        cache = self.vllm_config.cache_config
        return {"rank": get_tensor_model_parallel_rank(), "world": get_tensor_model_parallel_world_size(),
                "layers": state.layers, "neurons": state.width, "runner": type(runner).__name__,
                "activations": sorted({a for _, _, a in mlps}), "compiled": state.compiled, "slots": SLOTS,
                "granularity": [g for g in (cache.block_size, getattr(cache, "hash_block_size", None),
                                            getattr(cache, "cache_hit_alignment_tokens", None)) if g]}

    def lna_begin(self, mode: str, n_slots: int, n_samples: int, masks: bytes | None = None,
                  mask_shape: tuple | None = None, values: bytes | None = None, sums: bool = False) -> None:
        """Open a call. count: n_slots languages, at most SLOTS (sums: also the activation
        sums). nll and generate: masks = np.packbits of bool [n_masks, layer, neuron], values
        (or None: zero) the float32 bytes of the same shape (all ranks' neurons; this rank
        takes its slice)."""
        from vllm.distributed import get_tensor_model_parallel_rank

        st = self.model_runner._lna
        if mode == "count" and n_slots > SLOTS:
            raise RuntimeError(f"lna: {n_slots} languages in one call; at most {SLOTS}")
        if mode != "count" and masks is not None and st.compiled:
            raise RuntimeError("lna: interventions need the eager engine (enforce_eager=True)")
        layers, width, device = st.layers, st.width, st.device
        st.mode, st.steps, st.planned, st.errors, st.has_logits = mode, 0, 0, [], False
        st.n_slots = n_slots if mode == "count" else 0
        st.sums = bool(sums) and mode == "count"
        st.calls = [0] * layers
        st.tracker = None if mode == "generate" else Tracker(mode, n_samples)
        st.masks = st.values = st.nll = None
        st.ids.fill_(-1)
        for m in st.modules:
            for t in (m.lna_counts, m.lna_sums, m.lna_active_sums, m.lna_tally):
                t.zero_()
        if mode == "nll":
            st.nll = torch.zeros(n_samples, dtype=torch.float64, device=device)
        if masks is not None:
            n_masks, n_layers, neurons = mask_shape
            r = get_tensor_model_parallel_rank()

            def mine(full):  # this rank's neurons, one [n_masks, width] table per layer
                part = torch.from_numpy(np.ascontiguousarray(full.reshape(n_masks, n_layers, neurons)
                                                             [:, :, r * width:(r + 1) * width]))
                return [part[:, layer].contiguous().to(device) for layer in range(layers)]

            bits = np.unpackbits(np.frombuffer(masks, dtype=np.uint8), count=n_masks * n_layers * neurons)
            st.masks = mine(bits.astype(bool))
            if values is not None:
                st.values = mine(np.frombuffer(values, dtype=np.float32).copy())

    def lna_end(self) -> dict:
        from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size

        st = self.model_runner._lna
        tr = st.tracker
        out = {"rank": get_tensor_model_parallel_rank(), "world": get_tensor_model_parallel_world_size(),
               "steps": st.steps, "errors": list(st.errors), "counts": None, "shape": None, "nll": None,
               "sums": None, "active_sums": None,
               # generate has no positions to account for
               "done": [] if tr is None else tr.done.tolist(), "gaps": [] if tr is None else [list(g) for g in tr.gaps],
               "recomputed": 0 if tr is None else tr.recomputed, "reused": 0 if tr is None else tr.reused}
        if st.mode == "count":
            tally = torch.cat([m.lna_tally for m in st.modules]).tolist()
            wrong = [layer for layer, t in enumerate(tally) if t != st.planned]
            if wrong:
                out["errors"].append(f"layer {wrong[0]} counted {tally[wrong[0]]} tokens, the steps planned "
                                     f"{st.planned} ({len(wrong)} such layers: compiled or CUDA-graph code "
                                     "bypassed the counting op)")
            tables = {"counts": "lna_counts"} | ({"sums": "lna_sums", "active_sums": "lna_active_sums"}
                                                if st.sums else {})
            for key, name in tables.items():
                table = torch.stack([getattr(m, name)[:st.n_slots] for m in st.modules]).cpu().numpy()
                out[key], out["shape"] = table.tobytes(), list(table.shape)
        if st.nll is not None and st.has_logits:
            out["nll"] = st.nll.cpu().numpy().tobytes()
        st.mode, st.masks, st.values, st.nll, st.tracker, st.sums = None, None, None, None, None, False
        st.ids.fill_(-1)
        return out


_hook_model_runners()
