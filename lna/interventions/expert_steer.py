"""lna-steer on a mixture-of-experts model, with the sets `lna experts` writes (docs/moe.md).

The command and its files are lna-steer's (lna.interventions.steer); what differs is a
row's intervention: source's expert neurons (and always-on neurons) zeroed, target's set to
a constant. MoE stores keep no activation sums, so no "strength x mean activation" exists
for expert neurons: with --value constant each strength is the value act(gate) is set to
(the other --value kinds are refused in one line). An expert neuron is set on the tokens
routed to its expert only (routing stays the router's); an always-on neuron on every token.
"""
from dataclasses import dataclass

import numpy as np

from lna.core.errors import LnaError

VALUE = "constant"


@dataclass
class ExpertIntervention:
    """One row: lna.runners.moe.ExpertMasks of masks (bool) and values (float32), each part
    [layer, neuron] / [layer, expert, neuron]. `mask` and `values` are both parts flattened
    (what lna-steer's table counts)."""

    masks: object
    set_to: object

    @property
    def mask(self) -> np.ndarray:
        return np.concatenate([p.ravel() for p in self.masks])

    @property
    def values(self) -> np.ndarray:
        return np.concatenate([p.ravel() for p in self.set_to])

    offsets = None  # lna-steer's additive path (diffmean) is for dense models

    @property
    def empty(self) -> bool:
        return not self.mask.any()


def check_value(value: str) -> None:
    if value != VALUE:
        raise LnaError(f"--value {value}: mixture-of-experts stores keep no activation sums, so expert neurons have "
                       f"no mean activation to steer to; give --value {VALUE} (each strength is then the value set)")


def intervention(runner, sets: dict, source: str, target: str, strength, layers) -> ExpertIntervention:
    """source's neurons zeroed, target's set to `strength` (None: left as they are; a neuron
    of both is set), in `layers`. sets: {lang: (neurons [n, 3], experts [m, 2])}."""
    from lna.identification.experts import ablation_masks
    from lna.runners.moe import ExpertMasks

    for lang in (source, target):
        if lang not in sets:
            raise LnaError(f"the expert neuron sets have no {lang!r}: they have {', '.join(sets)}")
    off = ablation_masks(runner, neurons=[sets[source][0]])
    on = ablation_masks(runner, neurons=[sets[target][0] if strength is not None else np.zeros((0, 3), np.int64)])
    keep = np.zeros(runner.layers, bool)
    keep[list(layers)] = True
    masks, values = [], []
    for a, b in zip(off, on):
        mask = (a[0] | b[0]) & keep.reshape(-1, *[1] * (a[0].ndim - 1))
        masks.append(mask)
        values.append(np.where(mask & b[0], np.float32(strength or 0), np.float32(0)).astype(np.float32))
    return ExpertIntervention(ExpertMasks(*masks), ExpertMasks(*values))


def stack(interventions: list) -> tuple:
    """(masks, values) as ExpertMasks of [n_rows, ...] tables, what MoERunner takes."""
    from lna.runners.moe import ExpertMasks

    return (ExpertMasks(*(np.stack(p) for p in zip(*(iv.masks for iv in interventions)))),
            ExpertMasks(*(np.stack(p) for p in zip(*(iv.set_to for iv in interventions)))))
