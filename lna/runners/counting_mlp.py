"""The counting MLP that the transformers runners (lna.runners.hf, lna.runners.moe) and
lna.count install into each decoder layer, and the state it reads during one forward.

CountingMLP computes exactly down(act(gate(x)) * up(x)) (act: SiLU, or GELU-tanh for Gemma;
gate and up from separate projections or from one packed gate_up_proj, read as views without
a copy) through the fused kernel (lna.kernels.silu_mul) and, in the same pass, counts gate > 0
per language on response tokens (and, if asked, sums act(gate) per language into float64
tables), or applies interventions: per token, a neuron passes, is zeroed, or is set to a value.
"""
import torch
from torch import nn

from lna.core.errors import LnaError
from lna.models import families
from lna.kernels import silu_mul, silu_mul_packed


class CountingState:
    """What the counting MLPs read during one forward (set by the runner, then cleared)."""

    def __init__(self):
        self.clear()

    def clear(self):
        self.index = None  # flat indices of the real tokens, or None: every token
        self.lang_ids = None  # int32 [N] language index per real token (-1: not counted)
        self.counts = None  # int64 [layer, language, neuron], updated in place
        self.sums = self.active_sums = None  # float64 [layer, language, neuron], updated in place
        self.masks = None  # bool [layer, n_masks, neuron]
        self.values = None  # float32 [layer, n_masks, neuron]: set masked neurons to these (None: zero)
        self.offsets = None  # float32 [layer, n_masks, neuron]: then add these to act(gate) (None: nothing)
        self.mask_ids = None  # int32 [N] mask per real token (-1: none)
        self.row_ids = None  # int [B] mask per batch row, for every token of the row (generate)
        self.nonfinite = None  # int32 [layer]: nonzero where a counted gate was NaN or Inf (the kernel's flag)
        self.calls = 0
        self.workspace = {}  # CPU: name -> flat buffer the MLPs write into, reused layer after layer

    def buffer(self, name: str, rows: int, width: int, like: torch.Tensor) -> torch.Tensor:
        """A [rows, width] view of the workspace buffer `name` (grown when too small): on CPU a
        fresh [T, I] tensor per layer costs its page faults every time (glibc maps blocks over
        32 MiB anew; measured 5.5% of a TinyLlama-shaped MLP), a reused one once."""
        buf = self.workspace.get(name)
        if buf is None or buf.numel() < rows * width or buf.dtype != like.dtype:
            buf = self.workspace[name] = torch.empty(rows * width, dtype=like.dtype, device=like.device)
        return buf[:rows * width].view(rows, width)


class CountingMLP(nn.Module):
    def __init__(self, mlp: nn.Module, layer: int, state: CountingState, family: families.Family, act: dict):
        super().__init__()
        self.packed = family.packed
        if self.packed:
            self.gate_up_proj = mlp.gate_up_proj
        else:
            self.gate_proj, self.up_proj = mlp.gate_proj, mlp.up_proj
        self.down_proj = mlp.down_proj
        self.layer, self.state, self.act = layer, state, act

    def _reuse(self, flat) -> bool:
        """Whether gate and up go into the state's workspace: on CPU at inference (the runner's
        calls; its buffers are inference tensors), where the projections are plain nn.Linear
        without hooks, so torch.mm/addmm(out=) compute exactly what calling them would."""
        if flat.device.type != "cpu" or not torch.is_inference_mode_enabled():
            return False
        mods = (self.gate_up_proj,) if self.packed else (self.gate_proj, self.up_proj)
        return all(type(m) is nn.Linear and not m._forward_hooks and not m._forward_pre_hooks for m in mods)

    def _linear(self, module, flat, name):
        """module(flat) into the workspace buffer `name` (as F.linear: addmm with a bias, mm without)."""
        out = self.state.buffer(name, flat.shape[0], module.out_features, flat)
        if module.bias is None:
            return torch.mm(flat, module.weight.t(), out=out)
        return torch.addmm(module.bias, flat, module.weight.t(), out=out)

    def forward(self, x):
        st = self.state
        st.calls += 1
        flat = x.reshape(-1, x.shape[-1])
        if st.index is not None:
            flat = flat.index_select(0, st.index)
        mask_ids = st.mask_ids
        if st.row_ids is not None:  # generate: [B, S, H], one intervention per row
            if x.dim() != 3 or x.shape[0] != st.row_ids.shape[0]:
                raise LnaError(f"layer {self.layer}: the MLP got hidden states {tuple(x.shape)}, not one row per "
                               f"prompt ({st.row_ids.shape[0]}); this model's generate is not supported with "
                               "interventions")
            mask_ids = st.row_ids.repeat_interleave(x.shape[1])
        layer = self.layer
        kw = dict(lang_ids=st.lang_ids, counts=None if st.counts is None else st.counts[layer],
                  sums=None if st.sums is None else st.sums[layer],
                  active_sums=None if st.active_sums is None else st.active_sums[layer],
                  masks=None if mask_ids is None else st.masks[layer], mask_ids=mask_ids,
                  values=None if mask_ids is None or st.values is None else st.values[layer],
                  check_ids=False,  # the runner builds the ids; a range check would sync the GPU per layer
                  nonfinite=None if st.nonfinite is None or st.lang_ids is None else st.nonfinite[layer:layer + 1],
                  **self.act)
        if self._reuse(flat):
            kw["out"] = st.buffer("act", flat.shape[0], self.down_proj.in_features, flat)
            if self.packed:
                gate_up = self._linear(self.gate_up_proj, flat, "gate_up")
            else:
                gate, up = self._linear(self.gate_proj, flat, "gate"), self._linear(self.up_proj, flat, "up")
        elif self.packed:
            gate_up = self.gate_up_proj(flat)
        else:
            gate, up = self.gate_proj(flat), self.up_proj(flat)
        if self.packed:  # gate and up are views of the one [T, 2I] output
            h = silu_mul_packed(gate_up, **kw)
            up = gate_up[..., gate_up.shape[-1] // 2:]
        else:
            h = silu_mul(gate, up, **kw)
        if st.offsets is not None and mask_ids is not None:  # (act + d) * up = act * up + d * up
            d = st.offsets[layer].index_select(0, mask_ids.clamp(min=0).long())
            h = h + torch.where((mask_ids >= 0)[:, None], d, torch.zeros_like(d)).to(h.dtype) * up
        out = self.down_proj(h)
        if st.index is not None:
            full = out.new_zeros(x.numel() // x.shape[-1], out.shape[-1])
            out = full.index_copy_(0, st.index, out)
        return out.view(*x.shape[:-1], out.shape[-1])
