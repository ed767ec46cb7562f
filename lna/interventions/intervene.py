"""Interventions on MLP neurons: build them from neuron sets and a count store, and apply
one to a loaded transformers model (`lna.steer`, a context manager for notebooks).

An intervention is, per layer, a mask of neurons and the value each masked neuron's
activation act(gate) is replaced by before the product with up (0 zeroes it), and
optionally offsets added to the activations after that (lna-steer's difference of means). Steering
from language X to Y zeroes X's neurons and sets Y's to a multiple (the strength) of
their mean activation in Y, known from the store's activation sums:
    mean         sums / tokens: the expected activation on a token of Y (default), or
    active-mean  active_sums / counts: its mean on the Y tokens where it fired.
A neuron listed under both X and Y is set (it is one of Y's). `layers` restricts it to
some layers (the rest pass untouched).

    import lna
    with lna.steer(model, neurons="neurons.json", store="model.zarr", source="en", target="zh", strength=2):
        out = model.generate(**tokenizer("Question: ...", return_tensors="pt"), max_new_tokens=40)
"""
import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lna.core.errors import LnaError

SETTINGS = ("specific", "specific+related")


@dataclass
class Intervention:
    """Per layer and neuron: whether the activation is replaced, and by what."""
    mask: np.ndarray  # bool [layer, neuron]
    values: np.ndarray  # float32 [layer, neuron] (0 where only zeroed)
    offsets: np.ndarray | None = None  # float32 [layer, neuron]: added to act(gate) after (None: none)

    @property
    def empty(self) -> bool:
        return not self.mask.any() and (self.offsets is None or not self.offsets.any())


def parse_layers(spec: str | None, layers: int, named: dict | None = None) -> list:
    """`--layers` into named layer groups: "all" (default), or comma-separated groups, each a
    range "a-b", a layer "a", ranges joined by "+" ("0-3+12-15"), or a name of `named`
    ({name: layers}): [(name, sorted layers)]."""
    if spec is None or not spec.strip():
        spec = "all"
    groups = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if part == "all":
            groups.append(("all", list(range(layers))))
            continue
        if named and part in named:
            groups.append((part, sorted(named[part])))
            continue
        chosen = set()
        for piece in part.split("+"):
            lo, _, hi = piece.strip().partition("-")
            try:
                a, b = int(lo), int(hi or lo)
            except ValueError:
                raise LnaError(f"--layers {spec!r}: {piece!r} is not a layer or range such as 0-7") from None
            if a > b:
                raise LnaError(f"--layers {spec!r}: {piece!r} runs backwards; write the range low to high "
                               f"({b}-{a})")
            if not 0 <= a <= b < layers:
                raise LnaError(f"--layers {spec!r}: {piece!r} is outside the model's layers 0-{layers - 1}")
            chosen.update(range(a, b + 1))
        groups.append((part, sorted(chosen)))
    if not groups:
        raise LnaError(f"--layers {spec!r}: no layers; give e.g. all or 0-7,24-31")
    if len({name for name, _ in groups}) != len(groups):
        raise LnaError(f"--layers {spec!r} names a group twice")
    return groups


def neuron_mask(ns, lang: str, setting: str = "specific+related") -> np.ndarray:
    """bool [layer, neuron]: `lang`'s neurons in `ns` (lna.identification.neurons.NeuronSets)."""
    if lang not in ns.languages:
        raise LnaError(f"the neuron sets have no {lang!r}: they have {', '.join(ns.languages)}")
    if setting not in SETTINGS:
        raise LnaError(f"unknown setting {setting!r}: use {' or '.join(SETTINGS)}")
    sets = ns.sets if setting == "specific+related" else ns.split("specific")
    mask = np.zeros((ns.layers, ns.neurons), bool)
    for layer, idx in enumerate(sets[lang]):
        mask[layer, np.asarray(idx, np.int64)] = True
    return mask


def steering(ns, store, source: str, target: str, strength: float, layers=None, *,
             setting: str = "specific+related", value: str = "mean", zero_source: bool = True,
             level: np.ndarray | None = None) -> Intervention:
    """From `source` to `target`: source's neurons zeroed (if zero_source), target's set to
    strength x their mean activation in target (None: left as they are), in `layers` (None: all).
    `level` float [layer, neuron]: another per-neuron activation to multiply instead of the
    mean (lna-steer's quantile method)."""
    if (store.layers, store.neurons) != (ns.layers, ns.neurons):
        raise LnaError(f"the store counts {store.layers} x {store.neurons} neurons, the neuron sets "
                       f"{ns.layers} x {ns.neurons}: they come from different models")
    off = neuron_mask(ns, source, setting) if zero_source else np.zeros((ns.layers, ns.neurons), bool)
    on = neuron_mask(ns, target, setting) if strength is not None else np.zeros_like(off)
    values = np.zeros(off.shape, np.float32)
    if strength is not None:
        base = store.mean_activation(target, value) if level is None else np.asarray(level, np.float64)
        values[on] = (strength * base)[on]
    mask = off | on
    if layers is not None:
        keep = np.zeros(ns.layers, bool)
        keep[list(layers)] = True
        mask &= keep[:, None]
    return Intervention(mask, np.where(mask, values, 0).astype(np.float32))


def explicit(layers: int, neurons: int, zero=None, set=None) -> Intervention:  # noqa: A002 - the API's word
    """From {layer: indices} to zero and {layer: (indices, values)} to set (set wins)."""
    mask = np.zeros((layers, neurons), bool)
    values = np.zeros((layers, neurons), np.float32)
    for layer, idx in (zero or {}).items():
        _check_layer(layer, layers)
        mask[layer, np.asarray(idx, np.int64)] = True
    for layer, (idx, vals) in (set or {}).items():
        _check_layer(layer, layers)
        idx = np.asarray(idx, np.int64)
        mask[layer, idx] = True
        values[layer, idx] = np.broadcast_to(np.asarray(vals, np.float32), idx.shape)
    return Intervention(mask, values)


def _check_layer(layer, layers):
    if not 0 <= int(layer) < layers:
        raise LnaError(f"layer {layer} is outside the model's layers 0-{layers - 1}")


# -- the Python API ----------------------------------------------------------------------------
@contextlib.contextmanager
def steer(model, tokenizer=None, *, neurons=None, store=None, source=None, target=None, strength: float = 1.0,
          layers=None, setting: str = "specific+related", value: str = "mean", zero=None, set=None,  # noqa: A002
          intervention: Intervention | None = None):
    """Apply an intervention to a loaded transformers model inside a `with` block; the
    model's MLPs are restored on exit (also on an error).

    Either steering from `source` to `target` language with `neurons` (lna-identify's JSON,
    a path or lna.identification.neurons.NeuronSets) and `store` (a count store with activation sums, path
    or lna.storage.counts.CountStore), at `strength` times the target's mean activation, in `layers`
    (an iterable of layer indices or a --layers string; None: all); or explicit
    `zero={layer: indices}` and `set={layer: (indices, values)}`; or a ready `intervention`.
    `tokenizer` is accepted for symmetry with the runners and unused. Yields the
    Intervention applied.
    """
    from lna.models import families

    del tokenizer
    family, layer_list = _family_of(model), families.decoder(model).layers
    n_layers = len(layer_list)
    width = _width(layer_list[0].mlp, family)
    if intervention is None:
        if source is not None or target is not None:
            if neurons is None or store is None or source is None or target is None:
                raise LnaError("steering from one language to another needs neurons=, store=, source= and target=")
            from lna.identification import neurons as neuron_sets
            from lna.storage.counts import CountStore
            from lna.storage.store import open_store

            ns = neuron_sets.load(neurons) if not hasattr(neurons, "sets") else neurons
            st = store if isinstance(store, CountStore) else open_store(store)
            chosen = parse_layers(layers, n_layers)[0][1] if isinstance(layers, str) else layers
            intervention = steering(ns, st, source, target, strength, chosen, setting=setting, value=value)
        else:
            intervention = explicit(n_layers, width, zero, set)
    if intervention.mask.shape != (n_layers, width):
        raise LnaError(f"the intervention is for {intervention.mask.shape[0]} layers x {intervention.mask.shape[1]} "
                       f"neurons; this model has {n_layers} x {width}")
    originals = [layer.mlp for layer in layer_list]
    act = families.kernel_kwargs(family)
    try:
        for i, layer in enumerate(layer_list):
            offsets = None if intervention.offsets is None else intervention.offsets[i]
            if intervention.mask[i].any() or (offsets is not None and offsets.any()):
                layer.mlp = SteeredMLP(layer.mlp, family, intervention.mask[i], intervention.values[i], act, offsets)
        yield intervention
    finally:
        for layer, mlp in zip(layer_list, originals):
            layer.mlp = mlp


def _family_of(model):
    from lna.models import families

    config = families.hf_text_config(model)
    family = families.BY_TYPE.get(getattr(model.config, "model_type", None)) or \
        families.BY_TYPE.get(getattr(config, "model_type", None))
    if family is None:
        raise LnaError(f"{type(model).__name__}: not a model family lna supports ({families.supported()})")
    return family


def _width(mlp, family) -> int:
    proj = mlp.gate_up_proj if family.packed else mlp.gate_proj
    return proj.out_features // (2 if family.packed else 1)


class SteeredMLP(nn.Module):
    """down(act(gate) * up) with act replaced by `values` where `mask` and `offsets` added, on
    every token (the fused kernel's set path: a neuron outside the mask and without an offset
    is computed bit for bit as before)."""

    def __init__(self, mlp, family, mask, values, act, offsets=None):
        super().__init__()
        self.inner, self.family, self.act = mlp, family, act
        device = next(mlp.parameters()).device
        self.register_buffer("mask", torch.from_numpy(mask[None]).to(device), persistent=False)
        self.register_buffer("values", torch.from_numpy(values[None]).to(device), persistent=False)
        self.offsets = None if offsets is None else torch.from_numpy(np.asarray(offsets, np.float32)).to(device)

    def forward(self, x):
        from lna.models import families
        from lna.kernels import silu_mul

        flat = x.reshape(-1, x.shape[-1])
        gate, up = families.gate_up(self.inner, self.family, flat)
        ids = torch.zeros(flat.shape[0], dtype=torch.int32, device=flat.device)
        h = silu_mul(gate, up, masks=self.mask, mask_ids=ids, values=self.values, check_ids=False, **self.act)
        if self.offsets is not None:  # (act + d) * up = act * up + d * up, as the runner computes it
            h = h + self.offsets.to(h.dtype) * up
        return self.inner.down_proj(h).view(*x.shape[:-1], -1)
