"""Fewer passes over memory in the packed forward's elementwise work, on CPU.

transformers' Llama-style RMSNorm runs as five ops (pow, mean, add, rsqrt, two muls) and its
rotary embedding as q * cos + rotate_half(q) * sin, whose rotate_half builds a negated copy
with cat: on one CPU thread these were ~15% of lna's forward. During the packed forward only
(lna.runners.packed_attention), and only for models whose transformers code for them is
Llama's own (the same source text: a family with its own variant keeps it), they become
torch's fused rms_norm and a rotary of one multiply and two in-place multiply-adds. Both
compute the same products and sums with the same or fewer roundings (tests/test_packed_ops.py
holds them to twice transformers' error against float64); generate keeps transformers' code.
"""
import inspect
import sys

import torch
import torch.nn.functional as F


def rotary(q, k, cos, sin, unsqueeze_dim=1):
    """transformers' apply_rotary_pos_emb: x * cos + rotate_half(x) * sin, without the copy."""
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    return _rotate(q, cos, sin), _rotate(k, cos, sin)


def _rotate(x, cos, sin):
    h = x.shape[-1] // 2
    out = x * cos
    out[..., :h].addcmul_(x[..., h:], sin[..., :h], value=-1)  # rotate_half's first half is -x2
    out[..., h:].addcmul_(x[..., :h], sin[..., h:])
    return out


def rms_norm(module, hidden_states):
    """LlamaRMSNorm.forward through torch's fused kernel."""
    return F.rms_norm(hidden_states, (hidden_states.shape[-1],), module.weight, module.variance_epsilon)


class Swaps:
    """The swaps that apply to a decoder; `with swaps:` puts them in place and takes them out."""

    def __init__(self, decoder):
        from transformers.models.llama import modeling_llama as llama

        same = (lambda f, g: f is not None and _source(f) == _source(g))
        self.modules, self.norms = [], []
        for mod_name in {type(m).__module__ for m in decoder.modules()}:
            mod = sys.modules.get(mod_name)
            if (same(getattr(mod, "apply_rotary_pos_emb", None), llama.apply_rotary_pos_emb)
                    and same(getattr(mod, "rotate_half", None), llama.rotate_half)):
                self.modules.append(mod)
        norm_source = _source(llama.LlamaRMSNorm.forward)
        self.norms = [m for m in decoder.modules() if hasattr(m, "variance_epsilon") and
                      isinstance(getattr(m, "weight", None), torch.Tensor) and
                      _source(type(m).forward) == norm_source]
        self._saved = []

    def __enter__(self):
        for mod in self.modules:
            self._saved.append((mod, mod.apply_rotary_pos_emb))
            mod.apply_rotary_pos_emb = rotary
        for m in self.norms:
            m.forward = rms_norm.__get__(m)
        return self

    def __exit__(self, *exc):
        for mod, fn in self._saved:
            mod.apply_rotary_pos_emb = fn
        self._saved = []
        for m in self.norms:
            del m.forward


_sources: dict = {}


def _source(fn) -> str | None:
    if fn not in _sources:
        try:
            _sources[fn] = inspect.getsource(fn)
        except (OSError, TypeError):
            _sources[fn] = None
    return _sources[fn]
