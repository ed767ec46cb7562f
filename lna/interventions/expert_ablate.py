"""lna-ablate on a mixture-of-experts model, with the sets `lna experts` writes (docs/moe.md).

The experiment, its files (DIR/ppl.json, CSVs, heatmaps) and its resume (DIR/nll.npz) are
lna-ablate's (lna.interventions.ablate); what differs is what a row deactivates. A set
lists (layer, expert, neuron) triples, expert -1 being the layer's always-on MLP (shared
expert or dense MLP), and a row's mask is lna.runners.moe.ExpertMasks: act(gate) of those
neurons zeroed on every token routed to their expert (always-on: every token). Settings:
- specific: the neurons listed for that language only; specific+related: its whole set
  (as for dense models: a neuron is related when several languages list it);
- experts: the language's experts (language_experts.json beside expert_neurons.json)
  switched off whole: every neuron zeroed, so an expert adds 0 to the tokens routed to it;
  the router keeps its choices and the other experts their weights (nothing is re-routed);
- a JSON file: another expert_neurons.json (every listed neuron) or language_experts.json
  (whole experts), named by its stem.
The run itself is lna-ablate's (ablate._run_experts); the resume digest covers both mask
tables, so other sets or settings are refused.
"""
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lna.core.errors import LnaError
from lna.models import moe
from lna.models.fingerprint import check_runner

NEURONS_FILE, EXPERTS_FILE = "expert_neurons.json", "language_experts.json"
NEURONS_FORMAT, EXPERTS_FORMAT = "lna-expert-neurons/1", "lna-language-experts/1"


@dataclass
class ExpertSets:
    where: str  # the expert_neurons.json read
    languages: list
    neurons: dict  # lang -> int64 [n, 3]: (layer, expert, neuron), expert -1: the always-on MLP
    experts: dict | None  # lang -> int64 [n, 2]: (layer, expert), from language_experts.json beside (None: absent)
    source: dict  # model identity, shape, store


@dataclass
class ExpertPlan:
    """Distinct masks, which one each (setting, language) row uses (-1: the baseline), and
    how many neurons each row deactivates."""

    masks: object  # lna.runners.moe.ExpertMasks of bool [n_masks, layer, neuron], [n_masks, layer, expert, neuron]
    ids: dict  # setting -> {lang: mask id}
    sizes: dict  # setting -> {lang: neurons deactivated}

    @property
    def n_forward(self) -> int:
        return 1 + len(self.masks.experts)


# -- reading ------------------------------------------------------------------------------------
def _read(path: Path):
    """The JSON object of a file, or None where it is not readable JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def is_expert_sets(spec) -> bool:
    """Is --neurons the output of `lna experts` (its folder, or its expert_neurons.json)?"""
    path = Path(spec)
    if path.is_dir():
        return (path / NEURONS_FILE).is_file()
    obj = _read(path) if path.is_file() else None
    return isinstance(obj, dict) and obj.get("format") in (NEURONS_FORMAT, EXPERTS_FORMAT)


def _tables(obj, key: str, width: int, where: str) -> dict:
    """{lang: int64 [n, width]} of obj[key], one line for anything malformed."""
    sets = obj.get(key)
    rows_ok = isinstance(sets, dict) and all(
        isinstance(lang, str) and isinstance(rows, list) and all(
            isinstance(r, list) and len(r) == width and all(isinstance(i, int) and not isinstance(i, bool) for i in r)
            for r in rows) for lang, rows in sets.items())
    if not rows_ok:
        what = "(layer, expert, neuron)" if width == 3 else "(layer, expert)"
        raise LnaError(f"{where}: '{key}' must map each language to a list of {what} integer lists; "
                       "write it again with `lna experts STORE -o DIR`")
    return {lang: np.array(rows, np.int64).reshape(-1, width) for lang, rows in sets.items()}


def load(spec) -> ExpertSets:
    """expert_neurons.json (or the folder `lna experts` wrote), with language_experts.json
    where it lies beside it."""
    path = Path(spec)
    if path.is_dir():
        path = path / NEURONS_FILE
    if not path.is_file():
        raise LnaError(f"{path}: no such file; `lna experts STORE -o DIR` writes DIR/{NEURONS_FILE}")
    obj = _read(path)
    if isinstance(obj, dict) and obj.get("format") == EXPERTS_FORMAT:
        raise LnaError(f"{path}: language experts; give --neurons the {NEURONS_FILE} beside it (or their folder) "
                       "and --setting experts to switch the experts off whole")
    if not isinstance(obj, dict) or obj.get("format") != NEURONS_FORMAT:
        raise LnaError(f"{path}: not an expert neuron-set file ({NEURONS_FORMAT}); make one with `lna experts`")
    neurons = _tables(obj, "sets", 3, str(path))
    beside = path.parent / EXPERTS_FILE
    experts = _experts(beside) if beside.is_file() else None
    source = obj.get("source") if isinstance(obj.get("source"), dict) else {}
    return ExpertSets(str(path), list(neurons), neurons, experts, dict(source))


def _experts(path: Path) -> dict:
    obj = _read(path)
    if not isinstance(obj, dict) or "experts" not in obj:
        raise LnaError(f"{path}: not a language-experts file; make one with `lna experts`")
    return _tables(obj, "experts", 2, str(path))


def _specific(sets: dict) -> dict:
    """The neurons listed for one language only."""
    listed = [np.unique(a, axis=0) for a in sets.values() if len(a)]
    if not listed:
        return sets
    uniq, n = np.unique(np.concatenate(listed), axis=0, return_counts=True)
    once = {tuple(r) for r in uniq[n == 1].tolist()}
    return {lang: np.array([r for r in a.tolist() if tuple(r) in once], np.int64).reshape(-1, 3)
            for lang, a in sets.items()}


def setting_sets(es: ExpertSets, setting: str) -> tuple:
    """(name, {lang: (neurons int64 [n, 3], whole experts int64 [m, 2])}, (where, source) of
    a setting file or None)."""
    no_neurons, no_experts = np.zeros((0, 3), np.int64), np.zeros((0, 2), np.int64)
    if setting in ("specific", "specific+related"):
        sets = _specific(es.neurons) if setting == "specific" else es.neurons
        return setting, {lang: (a, no_experts) for lang, a in sets.items()}, None
    if setting == "experts":
        if es.experts is None:
            raise LnaError(f"--setting experts: no {EXPERTS_FILE} beside {es.where}; `lna experts STORE -o DIR` "
                           "writes both into DIR")
        return setting, {lang: (no_neurons, a) for lang, a in es.experts.items()}, None
    path = Path(setting)
    if not path.is_file():
        raise LnaError(f"--setting {setting!r}: on a mixture-of-experts model use specific, specific+related, "
                       f"experts or a JSON file of `lna experts` ({NEURONS_FILE} or {EXPERTS_FILE})")
    obj = _read(path)
    if isinstance(obj, dict) and obj.get("format") == NEURONS_FORMAT:
        other = load(path)
        return path.stem, {lang: (a, no_experts) for lang, a in other.neurons.items()}, (str(path), other.source)
    if isinstance(obj, dict) and obj.get("format") == EXPERTS_FORMAT:
        return (path.stem, {lang: (no_neurons, a) for lang, a in _experts(path).items()},
                (str(path), obj.get("source") if isinstance(obj.get("source"), dict) else {}))
    raise LnaError(f"--setting {path}: not a file of `lna experts` ({NEURONS_FILE} or {EXPERTS_FILE}); a dense "
                   "model's neuron sets do not apply to a mixture-of-experts model")


def check_shape(source: dict, where: str, model: str, layers: int, layout=None) -> None:
    """Refuse sets recorded on a model of another shape (layers from the config; experts and
    widths once the model is loaded). Files without a recorded shape are checked index by
    index when the masks are built."""
    shape = source.get("shape")
    if not isinstance(shape, dict):
        return
    got = [shape.get("layers"), shape.get("experts"), shape.get("expert_neurons"), shape.get("always_on")]
    want = [layers] + ([layout.experts, layout.expert_neurons, list(layout.always_on)] if layout else got[1:])
    if got != want:
        origin = source.get("model")
        raise LnaError(f"{where}: expert neuron sets of {got[0]} layers x {got[1]} experts x {got[2]} neurons "
                       f"(always-on widths {got[3]}), but {model} has {want[0]} x {want[1]} x {want[2]} "
                       f"({want[3]}); ablate them on the model they came from" + (f" ({origin})" if origin else "")
                       + " or run `lna experts` on this model's store")


# -- masks ----------------------------------------------------------------------------------------
def plan(settings: dict, runner, where: str = "expert sets") -> ExpertPlan:
    """Masks for {setting: {lang: (neurons, experts)}}, identical masks merged, empty ones
    mapped to the baseline."""
    from lna.identification.experts import ablation_masks
    from lna.runners.moe import ExpertMasks

    keys = [(name, lang) for name, sets in settings.items() for lang in sets]
    try:
        every = ablation_masks(runner, neurons=[settings[n][lang][0] for n, lang in keys],
                               experts=[settings[n][lang][1] for n, lang in keys])
    except LnaError as err:
        raise LnaError(f"{where}: {err}; ablate sets on the model they came from") from None
    seen, picked, ids, sizes = {}, [], {name: {} for name in settings}, {name: {} for name in settings}
    for m, (name, lang) in enumerate(keys):
        always, experts = every.always_on[m], every.experts[m]
        sizes[name][lang] = int(always.sum() + experts.sum())
        if not sizes[name][lang]:
            ids[name][lang] = -1
            continue
        key = np.packbits(always).tobytes() + np.packbits(experts).tobytes()
        if key not in seen:
            seen[key] = len(picked)
            picked.append(m)
        ids[name][lang] = seen[key]
    return ExpertPlan(ExpertMasks(every.always_on[picked], every.experts[picked]), ids, sizes)


def digest(masks) -> str:
    """Of both tables, shapes included: what a resumed run must match."""
    h = hashlib.sha256()
    for part in masks:
        h.update(str(part.shape).encode())
        h.update(np.packbits(part).tobytes())
    return "sha256:" + h.hexdigest()[:32]


# -- the command's checks (its run: lna.interventions.ablate._run_experts) ----------------------
def is_moe(info) -> bool:
    return isinstance(info.family, moe.MoEFamily)


def refuse_dense_sets(info, spec: str) -> None:
    """A dense model's neuron sets given for a mixture-of-experts model: one line."""
    if is_moe(info):
        raise LnaError(f"{spec}: neuron sets of a dense model, but {info.name} is a mixture-of-experts model; "
                       f"identify its expert neurons with `lna experts STORE -o DIR` and pass DIR/{NEURONS_FILE}")


def prepare(opts, info) -> tuple:
    """(ExpertSets of --neurons, {setting: {lang: (neurons, experts)}}, [(file, source)] to
    check once the model is loaded), checked against the model's config."""
    es = load(opts.neurons)
    if not is_moe(info):
        origin = es.source.get("model")
        raise LnaError(f"{opts.neurons}: expert neuron sets (lna experts), but {info.name} is a dense model; "
                       "ablate them on the mixture-of-experts model they came from"
                       + (f" ({origin})" if origin else "") + ", or give lna-identify's neuron sets")
    given = [setting_sets(es, s) for s in dict.fromkeys(opts.settings)]
    checks = [(str(opts.neurons), es.source)] + [g[2] for g in given if g[2]]
    for where, source in checks:
        check_shape(source, where, info.name, info.layers)
    return es, {name: sets for name, sets, _ in given}, checks


def check_loaded(checks: list, runner, opts) -> None:
    """Every file's recorded shape and model against the loaded model."""
    for where, source in checks:
        check_shape(source, where, runner.info.name, runner.layers, runner.layout)
        if not opts.allow_other_model:
            try:
                check_runner(source, runner, f"{where} and --model {opts.model}")
            except LnaError as err:
                raise LnaError(f"{err}; pass --allow-other-model to ablate them anyway") from None
