"""The part of the vLLM backend that runs inside vLLM's workers (one per tensor-parallel rank).

vLLM mixes `LnaWorkerExtension` into its worker class (`worker_extension_cls`), so every
rank, in-process or in its own process, gets these methods, and the runner calls them by
name with `llm.collective_rpc`:
- `lna_install()` swaps the activation (`act_fn`: vLLM's `SiluAndMul`, or `GeluAndMul`
  with the tanh approximation for Gemma) of every gated MLP for `CountingActAndMul`, which
  calls lna's fused kernel, and wraps the model runner's `_model_forward` so that each
  scheduled step first works out, from the step's requests, the slot (language or mask)
  of every token. vLLM's own model classes and its Transformers backend (which fuses a
  Hugging Face MLP into the same gate_up_proj + act_fn) both have this layout.
- `lna_begin(...)` / `lna_end()` open and close one count, nll or generate call; `lna_end`
  returns the rank's counts and activation sums (bytes) and the bookkeeping that the
  runner checks. In generate mode each request's tokens (prompt and generated) carry the
  request's intervention id: a neuron passes, is zeroed or is set to a value.
Which request a token belongs to comes from the model runner's persistent batch (the
order in which it lays requests out, their computed-token offsets and scheduled lengths)
and the request's own `SamplingParams.extra_args`, never from the tokens themselves.
Forward passes that do not come from the scheduler (profiling, warm-up, dummy runs) never
go through `_model_forward`, so they are never counted.
"""
import re

import numpy as np
import torch
from torch import nn

from lna.runners.vllm_batch import GENERATE_KEY, META_KEY, Tracker


class CountingActAndMul(nn.Module):
    """SiluAndMul / GeluAndMul on the packed [T, 2I] gate_up that also counts or masks, per token."""

    def __init__(self, layer: int, state: "_State", plain: nn.Module, activation: str):
        super().__init__()
        self.layer, self.state = layer, state
        self.plain = plain  # vLLM's own op, used outside of lna calls (generation)
        self.act = {} if activation == "silu" else {"activation": activation}

    def forward(self, x):
        st = self.state
        if st.ids is None:
            return self.plain(x)
        from lna.kernels import silu_mul_packed

        tokens = x.shape[:-1].numel()
        if tokens != st.ids.shape[0]:
            raise RuntimeError(f"lna: layer {self.layer} got {tokens} tokens but the step "
                               f"planned {st.ids.shape[0]}; this vLLM version lays out batches "
                               f"differently from what lna supports")
        st.calls[self.layer] += 1
        ids = st.ids.view(x.shape[:-1])  # the Transformers backend keeps a batch dimension of 1
        layer = self.layer
        if st.mode == "count":
            sums = {} if st.sums is None else {"sums": st.sums[layer], "active_sums": st.active_sums[layer]}
            return silu_mul_packed(x, lang_ids=ids, counts=st.counts[layer], check_ids=False, **sums, **self.act)
        if st.masks is None:
            return silu_mul_packed(x, **self.act)
        return silu_mul_packed(x, masks=st.masks[layer], mask_ids=ids, check_ids=False,
                               values=None if st.values is None else st.values[layer], **self.act)


class _State:
    """What one rank knows about the lna call in progress (None between calls)."""

    def __init__(self):
        self.mode = None  # "count" | "nll" | "generate" | None
        self.ids = None  # int32 [T] slot per token of the step in flight, on the device
        self.calls = []  # per layer: steps in which it counted or masked
        self.steps = 0  # planned steps of the call
        self.counts = None  # int64 [layer, slot, neurons of this rank]
        self.sums = self.active_sums = None  # float64 [layer, slot, neurons of this rank], or None
        self.masks = None  # bool [layer][n_masks, neurons of this rank]
        self.values = None  # float32 [layer][n_masks, neurons of this rank]: set, not zero (None: zero)
        self.nll = None  # float64 [samples]
        self.tracker = None
        self.errors = []
        self.has_logits = False  # this rank received logits (tensor parallel gathers to one)
        self.layers = self.width = self.device = None  # set by lna_install


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


class LnaWorkerExtension:
    """Methods added to each vLLM worker; called through `llm.collective_rpc(name, ...)`."""

    def lna_install(self) -> dict:
        from vllm.distributed import (get_pp_group, get_tensor_model_parallel_rank,
                                      get_tensor_model_parallel_world_size)

        runner = self.model_runner
        missing = [a for a in ("_model_forward", "input_batch", "requests", "query_start_loc")
                   if not hasattr(runner, a)]
        if missing:
            raise RuntimeError(f"lna: vLLM's model runner {type(runner).__name__} lacks {missing}; "
                               f"lna supports the V1 model runner (VLLM_USE_V2_MODEL_RUNNER=0)")
        if get_pp_group().world_size > 1:
            raise RuntimeError("lna: pipeline parallelism is not supported; use tensor parallelism")
        mlps = _gated_mlps(runner.model)
        layers = [layer for layer, _, _ in mlps]
        if not mlps or layers != list(range(len(mlps))):
            raise RuntimeError(f"lna: expected one gated MLP (SiLU or GELU-tanh) per layer, found layers {layers}")
        state = getattr(self, "_lna", None)
        if state is None:
            state = self._lna = _State()
            for layer, mlp, activation in mlps:
                mlp.act_fn = CountingActAndMul(layer, state, mlp.act_fn, activation)
            runner._model_forward = _planned_forward(runner, runner._model_forward, state)
        widths = {mlp.gate_up_proj.output_size_per_partition // 2 for _, mlp, _ in mlps}
        if len(widths) != 1:
            raise RuntimeError(f"lna: MLP widths differ between layers: {sorted(widths)}")
        state.layers, state.width = len(mlps), min(widths)
        state.device = next(runner.model.parameters()).device
        cache = self.vllm_config.cache_config
        return {"rank": get_tensor_model_parallel_rank(), "world": get_tensor_model_parallel_world_size(),
                "layers": state.layers, "neurons": state.width, "runner": type(runner).__name__,
                "activations": sorted({a for _, _, a in mlps}),
                "granularity": [g for g in (cache.block_size, getattr(cache, "hash_block_size", None),
                                            getattr(cache, "cache_hit_alignment_tokens", None)) if g]}

    def lna_begin(self, mode: str, n_slots: int, n_samples: int, masks: bytes | None = None,
                  mask_shape: tuple | None = None, values: bytes | None = None, sums: bool = False) -> None:
        """Open a call. count: n_slots languages (sums: also the activation sums). nll and
        generate: masks = np.packbits of bool [n_masks, layer, neuron], values (or None:
        zero) the float32 bytes of the same shape (all ranks' neurons; this rank takes its
        slice)."""
        from vllm.distributed import get_tensor_model_parallel_rank

        st = self._lna
        layers, width, device = st.layers, st.width, st.device
        st.mode, st.ids, st.steps, st.errors, st.has_logits = mode, None, 0, [], False
        st.calls = [0] * layers
        st.tracker = None if mode == "generate" else Tracker(mode, n_samples)
        st.counts = st.sums = st.active_sums = st.masks = st.values = st.nll = None
        if mode == "count":
            st.counts = torch.zeros(layers, n_slots, width, dtype=torch.int64, device=device)
            if sums:  # float64: the kernel's fp32 partials add into it exactly
                st.sums, st.active_sums = (torch.zeros(layers, n_slots, width, dtype=torch.float64, device=device)
                                           for _ in range(2))
            return
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

        st = self._lna
        tr = st.tracker
        out = {"rank": get_tensor_model_parallel_rank(), "world": get_tensor_model_parallel_world_size(),
               "steps": st.steps, "errors": list(st.errors), "counts": None, "shape": None, "nll": None,
               "sums": None, "active_sums": None, "calls": list(st.calls),
               # generate has no positions to account for
               "done": [] if tr is None else tr.done.tolist(), "gaps": [] if tr is None else [list(g) for g in tr.gaps],
               "recomputed": 0 if tr is None else tr.recomputed, "reused": 0 if tr is None else tr.reused}
        if st.counts is not None:
            counts = st.counts.cpu().numpy()
            out["counts"], out["shape"] = counts.tobytes(), list(counts.shape)
        if st.sums is not None:
            out["sums"], out["active_sums"] = (t.cpu().numpy().tobytes() for t in (st.sums, st.active_sums))
        if st.nll is not None and st.has_logits:
            out["nll"] = st.nll.cpu().numpy().tobytes()
        st.mode, st.ids, st.counts, st.masks, st.nll, st.tracker = None, None, None, None, None, None
        st.sums = st.active_sums = st.values = None
        return out


# Logit rows scored at once: bounds the [rows, vocab] fp32 temporaries (~0.5 GB at 128k vocab).
SCORE_ROWS = 1024


def _planned_forward(runner, forward, st: _State):
    """runner._model_forward, preceded by planning the step's per-token slots."""

    def planned(*args, **kwargs):
        if st.mode is None:
            return forward(*args, **kwargs)
        batch = runner.input_batch
        n = batch.num_reqs
        req_ids = batch.req_ids[:n]
        qsl = runner.query_start_loc.np[:n + 1]
        lens = np.diff(qsl)
        starts = batch.num_computed_tokens_cpu[:n]
        metas, sequences = [], []
        for req_id in req_ids:
            req = runner.requests[req_id]
            extra = req.sampling_params.extra_args if req.sampling_params is not None else None
            metas.append(extra.get(META_KEY) if extra else None)
            sequences.append(req.prompt_token_ids)
        positions = kwargs.get("positions")
        n_tokens = positions.shape[-1]
        if st.mode == "generate":
            return _intervened(forward, args, kwargs, runner, req_ids, lens, n_tokens, positions, st)
        step = st.tracker.step(metas, starts, lens, n_tokens, sequences)
        # The runner derives positions from the same offsets; on CPU the check is free.
        if positions.device.type == "cpu" and not np.array_equal(
                positions[:len(step.positions)].numpy(), step.positions):
            st.errors.append("token positions of a step differ from the planned ones")
        if not metas or all(m is None for m in metas):
            return forward(*args, **kwargs)
        st.steps += 1
        before = list(st.calls)
        st.ids = torch.from_numpy(step.ids).to(positions.device, non_blocking=True)
        try:
            hidden = forward(*args, **kwargs)
        finally:
            st.ids = None
        if [c - b for c, b in zip(st.calls, before)] != [1] * len(st.calls):
            st.errors.append("some MLP layers did not run the counting activation in a step "
                             "(compiled or CUDA-graph code bypassed it)")
        if st.mode == "nll" and len(step.rows):
            _score(runner, hidden, step, st)
        return hidden

    return planned


def _intervened(forward, args, kwargs, runner, req_ids, lens, n_tokens, positions, st: _State):
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
    st.ids = torch.from_numpy(ids).to(positions.device, non_blocking=True)
    try:
        hidden = forward(*args, **kwargs)
    finally:
        st.ids = None
    if [c - b for c, b in zip(st.calls, before)] != [1] * len(st.calls):
        st.errors.append("some MLP layers did not run the intervening activation in a step "
                         "(compiled or CUDA-graph code bypassed it)")
    return hidden


def _score(runner, hidden, step, st: _State):
    """Add -log p(target) of each scoring row to its sample's total (fp32 logits)."""
    device = hidden.device
    rows = torch.from_numpy(step.rows).to(device)
    samples = torch.from_numpy(step.samples).to(device)
    targets = torch.from_numpy(step.targets).to(device)
    for i in range(0, len(rows), SCORE_ROWS):
        logits = runner.model.compute_logits(hidden[rows[i:i + SCORE_ROWS]])
        if logits is None:  # tensor parallel: the logits were gathered to another rank
            continue
        st.has_logits = True
        logp = torch.log_softmax(logits.float(), dim=-1)
        picked = logp.gather(1, targets[i:i + SCORE_ROWS, None]).squeeze(1)
        st.nll.index_add_(0, samples[i:i + SCORE_ROWS], -picked.double())
