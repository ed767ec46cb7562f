"""lna-steer's interventions, each setting the target's neurons from a per-neuron level:

- mean (Tang et al. 2024's deactivate-one-language, activate-another; the default): X's
  neurons zeroed, Y's set to strength x their mean activation in Y (the store's sums /
  tokens, or --value active-mean).
- quantile (a fixed high value from the target's own activations, after Kojima et al. 2024,
  who fix the found neurons to a value taken from their activations on target-language
  text): X's neurons zeroed, Y's set to strength x the q-quantile (--quantile, 0.9) of each
  neuron's activation on the response tokens of the Y reference responses. The store holds
  sums, not distributions, so the quantiles are computed here, exactly, by one forward over
  those references with the unsteered model (the transformers backend).
- diffmean (adding the difference of means, as activation addition does, Turner et al.
  2023, Rimsky et al. 2024, here in the space of MLP neuron activations): nothing zeroed or
  replaced; strength x (mean activation in Y - mean activation in X), both from the store,
  added to the activations of X's and Y's neurons (the neurons the other methods touch).
  The runners' additive path is the transformers backend's.

"dense" in --layers (intervene.parse_layers' named groups) limits either to the layers
where the two languages' neurons concentrate: the fewest layers that hold at least half of
X's and Y's neurons, taken by how many they hold (ties: the lower layer first).
"""
from dataclasses import dataclass, field

import numpy as np

from lna.core.errors import LnaError
from lna.interventions import intervene

METHODS = ("mean", "quantile", "diffmean")
DENSE = "dense"
DENSE_SHARE = 0.5


def parse(spec: str) -> tuple:
    methods = tuple(m.strip() for m in spec.split(",") if m.strip())
    unknown = [m for m in methods if m not in METHODS]
    if not methods or unknown:
        raise LnaError(f"--methods {spec!r}: use one or more of {', '.join(METHODS)} (comma-separated)")
    if len(set(methods)) != len(methods):
        raise LnaError(f"--methods {spec!r} names a method twice")
    return methods


def dense_layers(ns, langs, setting: str) -> list:
    """The fewest layers holding at least DENSE_SHARE of `langs`' neurons (by count, lower first on ties)."""
    per_layer = sum(intervene.neuron_mask(ns, lang, setting) for lang in langs).astype(bool).sum(1)
    total = int(per_layer.sum())
    if total == 0:
        raise LnaError(f"--layers {DENSE}: {' and '.join(langs)} have no neurons in these sets")
    chosen, held = [], 0
    for layer in sorted(range(len(per_layer)), key=lambda i: (-per_layer[i], i)):
        chosen.append(layer)
        held += int(per_layer[layer])
        if held >= DENSE_SHARE * total:
            break
    return sorted(chosen)


def build(method: str, ns, store, source: str, target: str, strength, layers, *, setting: str, value: str,
          quantiles: np.ndarray | None = None) -> intervene.Intervention:
    if method == "diffmean" and strength is not None:
        return difference_of_means(ns, store, source, target, strength, layers, setting=setting, value=value)
    level = None
    if method == "quantile" and strength is not None:
        level = quantiles
    return intervene.steering(ns, store, source, target, strength, layers, setting=setting, value=value,
                              level=level)


def difference_of_means(ns, store, source: str, target: str, strength: float, layers=None, *,
                        setting: str, value: str) -> intervene.Intervention:
    """strength x (mean_target - mean_source) added to act(gate) of both languages' neurons in `layers`."""
    both = intervene.neuron_mask(ns, source, setting) | intervene.neuron_mask(ns, target, setting)
    if layers is not None:
        keep = np.zeros(ns.layers, bool)
        keep[list(layers)] = True
        both &= keep[:, None]
    diff = store.mean_activation(target, value) - store.mean_activation(source, value)
    offsets = np.where(both, strength * diff, 0).astype(np.float32)
    empty = np.zeros(both.shape, bool)
    return intervene.Intervention(empty, np.zeros(both.shape, np.float32), offsets)


def activation_quantiles(runner, samples, mask: np.ndarray, q: float) -> np.ndarray:
    """float64 [layer, neuron]: per neuron of `mask`, the q-quantile (numpy's linear) of
    act(gate) over the response tokens of `samples` under the unsteered model (0 elsewhere).
    act is computed in float64 from the model's gate values."""
    import torch

    from lna.models import families
    from lna.runners.hf import HFRunner

    if not isinstance(runner, HFRunner):
        raise LnaError("--methods quantile computes its per-neuron quantiles with the transformers backend: "
                       "pass --backend hf, or leave quantile out")
    if not samples:
        raise LnaError("--methods quantile needs reference responses in the target language (--responses)")
    act = families.reference_act(runner.family)
    seen = {}
    layers = runner.decoder.layers
    per_layer = [[] for _ in layers]
    hooks = [layer.mlp.register_forward_pre_hook(lambda m, args, i=i: seen.__setitem__(i, (m, args[0])))
             for i, layer in enumerate(layers)]
    runner.state.clear()
    try:
        with torch.inference_mode():
            for s in samples:
                ids = torch.tensor([list(s.prompt) + list(s.response)], device=runner.device)
                seen.clear()
                runner.decoder(input_ids=ids, use_cache=False)
                for i, (mlp, x) in seen.items():
                    gate, _ = families.gate_up(mlp, runner.family, x[0, len(s.prompt):])
                    a = act(gate.double())[:, torch.from_numpy(np.flatnonzero(mask[i])).to(gate.device)]
                    per_layer[i].append(a.cpu().numpy())
    finally:
        for h in hooks:
            h.remove()
        runner.state.clear()
    out = np.zeros(mask.shape, np.float64)
    for i, parts in enumerate(per_layer):
        if mask[i].any():
            out[i, mask[i]] = np.quantile(np.concatenate(parts), q, axis=0)
    return out


# -- the rows of a run ---------------------------------------------------------------------------
@dataclass
class Row:
    name: str  # "baseline", "<layers>/off", "<layers>/x<strength>", "<method>:<layers>/x<strength>"
    layers: str
    strength: float | None  # None: off (Y untouched); NaN for the baseline
    intervention: intervene.Intervention | None
    method: str = "-"
    layer_list: list = field(default_factory=list)


def row_name(method: str, group: str, strength) -> str:
    label = "off" if strength is None else f"x{strength:g}"
    return f"{group}/{label}" if method == "mean" or strength is None else f"{method}:{group}/{label}"


class Planner:
    """Rows of one run: the method's intervention for a layer group and strength."""

    def __init__(self, ns, store, opts, quantiles=None):
        self.ns, self.store, self.opts, self.quantiles = ns, store, opts, quantiles
        named = {}
        if DENSE in [p.strip() for p in opts.layers.split(",")]:
            named[DENSE] = dense_layers(ns, (opts.source, opts.target), opts.setting)
        self.groups = intervene.parse_layers(opts.layers, ns.layers, named)

    def row(self, method: str, group: str, layers: list, strength) -> Row:
        o = self.opts
        iv = build(method, self.ns, self.store, o.source, o.target, strength, layers, setting=o.setting,
                           value=o.value, quantiles=self.quantiles)
        return Row(row_name(method, group, strength), group, strength, iv, "-" if strength is None else method,
                   list(layers))

    def grid(self, chosen: tuple) -> list:
        """The rows: baseline, then per layer group "off" and each method and strength."""
        rows = [Row("baseline", "-", float("nan"), None)]
        for name, layers in self.groups:
            rows.append(self.row("mean", name, layers, None))
            rows += [self.row(m, name, layers, s) for m in chosen for s in self.opts.strengths]
        return rows
