"""Neuron sets: the result of identification, as JSON (docs/design.md, "Neuron sets").

    {"method", "top_rate", "lambda", "tau", "languages": [...], "layers", "neurons",
     "sets": {lang: [[sorted indices of layer 0], ..., [last layer]]},
     "general": [[...per layer...]], "source": {...},
     "specific": {lang: [[...]]}, "tau_quantile", "lambda_auto"}

`sets[lang]` lists every selected neuron whose probability for `lang` exceeds tau, so a
neuron shared by N languages appears under N of them: N = 1 is language-specific,
1 < N < l language-related. `specific` is the N = 1 part of `sets` (ablation settings
"specific" vs "specific+related"); `general` are the neurons above tau for every language.
Exportable to the released `.pt` mask layout (list over languages of list over layers of
LongTensor), which the study's and Tang et al.'s scripts read.
"""
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lna.core.atomic import atomic_file
from lna.core.errors import LnaError

FORMAT = "lna-neurons/1"
_REQUIRED = ("method", "top_rate", "lambda", "tau", "languages", "layers", "neurons", "sets", "general")


@dataclass
class NeuronSets:
    method: str
    top_rate: float
    lam: float | None  # "lambda" in JSON; None for LAPE
    tau: float
    languages: list[str]
    layers: int
    neurons: int
    sets: dict  # lang -> list over layers of sorted int64 arrays
    general: list  # list over layers of sorted int64 arrays
    source: dict = field(default_factory=dict)
    tau_quantile: float = 0.95
    lambda_auto: bool = False

    # -- derived views ---------------------------------------------------------------
    def shared_by(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per layer: (neuron indices listed under any language, how many languages list each)."""
        out = []
        for layer in range(self.layers):
            listed = np.concatenate([self.sets[lang][layer] for lang in self.languages])
            idx, n = np.unique(listed, return_counts=True)
            out.append((idx, n))
        return out

    def split(self, kind: str) -> dict:
        """{lang: per-layer indices} of the `specific` (N = 1) or `related` (N > 1) part."""
        per_layer = self.shared_by()
        out = {}
        for lang in self.languages:
            layers = []
            for layer, (idx, n) in enumerate(per_layer):
                keep = idx[n == 1] if kind == "specific" else idx[n > 1]
                layers.append(np.intersect1d(self.sets[lang][layer], keep, assume_unique=True))
            out[lang] = layers
        return out

    def sizes(self) -> dict:
        """{lang: {"all", "specific", "related"}} numbers of listed neurons."""
        spec, rel = self.split("specific"), self.split("related")
        return {lang: {"all": sum(len(a) for a in self.sets[lang]),
                       "specific": sum(len(a) for a in spec[lang]),
                       "related": sum(len(a) for a in rel[lang])} for lang in self.languages}

    # -- JSON ------------------------------------------------------------------------
    def to_json(self) -> dict:
        def lists(per_layer):
            return [[int(i) for i in a] for a in per_layer]

        return {
            "format": FORMAT,
            "method": self.method,
            "top_rate": self.top_rate,
            "lambda": self.lam,
            "lambda_auto": self.lambda_auto,
            "tau": self.tau,
            "tau_quantile": self.tau_quantile,
            "languages": list(self.languages),
            "layers": self.layers,
            "neurons": self.neurons,
            "sets": {lang: lists(self.sets[lang]) for lang in self.languages},
            "specific": {lang: lists(a) for lang, a in self.split("specific").items()},
            "general": lists(self.general),
            "source": self.source,
        }


def save(ns: NeuronSets, path) -> Path:
    """Write the JSON atomically (nothing half-written on failure)."""
    with atomic_file(path, "json") as tmp:
        tmp.write_text(_dumps(ns.to_json()), encoding="utf-8")  # one layer per line: small, diffable
    return Path(path)


def _dumps(obj: dict) -> str:
    lines = ["{"]
    items = list(obj.items())
    for i, (key, value) in enumerate(items):
        comma = "," if i < len(items) - 1 else ""
        if key in ("sets", "specific"):
            inner = [f"    {json.dumps(lang)}: [\n" + ",\n".join(f"      {json.dumps(layer)}" for layer in layers)
                     + "\n    ]" for lang, layers in value.items()]
            lines.append(f'  "{key}": {{\n' + ",\n".join(inner) + f"\n  }}{comma}")
        elif key == "general":
            lines.append(f'  "{key}": [\n' + ",\n".join(f"    {json.dumps(layer)}" for layer in value) + f"\n  ]{comma}")
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value)}{comma}")
    return "\n".join(lines) + "\n}\n"


def load(path) -> NeuronSets:
    """Read and validate a neuron-set JSON; one clear LnaError for anything wrong."""
    path = Path(path)
    if not path.exists():
        raise LnaError(f"{path}: no such neuron-set file (make one with lna-identify)")
    if path.is_dir():
        raise LnaError(f"{path}: is a folder, not a neuron-set JSON file")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise LnaError(f"{path}: not a neuron-set JSON file ({err})") from None
    return from_json(obj, str(path))


def from_json(obj, where: str = "neuron sets") -> NeuronSets:
    def bad(msg):
        return LnaError(f"{where}: {msg}; regenerate it with lna-identify")

    if not isinstance(obj, dict):
        raise bad("not a neuron-set JSON object")
    missing = [k for k in _REQUIRED if k not in obj]
    if missing:
        raise bad(f"not a neuron-set file (missing {', '.join(missing)})")
    langs, layers, neurons = obj["languages"], obj["layers"], obj["neurons"]
    if not (isinstance(langs, list) and langs and all(isinstance(x, str) for x in langs)):
        raise bad("'languages' must be a non-empty list of language codes")
    if len(set(langs)) != len(langs):
        raise bad(f"'languages' lists a language twice: {langs}")
    if not (type(layers) is int and layers > 0 and type(neurons) is int and neurons > 0):
        raise bad("'layers' and 'neurons' must be positive integers")
    if not isinstance(obj["sets"], dict) or set(obj["sets"]) != set(langs):
        raise bad("'sets' must have exactly one entry per language of 'languages'")

    def per_layer(value, what):
        if not isinstance(value, list) or len(value) != layers:
            raise bad(f"{what} must be a list of {layers} per-layer lists")
        out = []
        for i, layer in enumerate(value):
            # integers only: numpy would read 1.5 as 1 and "7" as 7
            if not isinstance(layer, list) or not all(type(x) is int for x in layer):
                raise bad(f"{what}, layer {i}: neuron indices must be integers (a list of them)")
            arr = np.asarray(layer, dtype=np.int64)
            if arr.ndim != 1 or (arr.size and (arr.min() < 0 or arr.max() >= neurons)):
                raise bad(f"{what}, layer {i}: neuron indices must lie in 0..{neurons - 1}")
            if (np.diff(arr) <= 0).any():
                raise bad(f"{what}, layer {i}: neuron indices must be sorted and unique")
            out.append(arr)
        return out

    sets = {lang: per_layer(obj["sets"][lang], f"sets[{lang}]") for lang in langs}
    general = per_layer(obj["general"], "general")
    lam = obj["lambda"]
    if not isinstance(obj.get("source") or {}, dict):
        raise bad("'source' must be an object (the store and model the sets come from)")
    try:
        ns = NeuronSets(str(obj["method"]), float(obj["top_rate"]), None if lam is None else float(lam),
                        float(obj["tau"]), list(langs), layers, neurons, sets, general,
                        dict(obj.get("source") or {}), float(obj.get("tau_quantile", 0.95)),
                        bool(obj.get("lambda_auto", False)))
    except (TypeError, ValueError):
        raise bad("'top_rate', 'lambda', 'tau' must be numbers") from None
    if "specific" in obj:
        spec = obj["specific"]
        if not isinstance(spec, dict) or set(spec) != set(langs):
            raise bad("'specific' must have one entry per language")
        derived = ns.split("specific")
        for lang in langs:
            given = per_layer(spec[lang], f"specific[{lang}]")
            if any(not np.array_equal(a, b) for a, b in zip(given, derived[lang])):
                raise bad(f"'specific' of {lang} disagrees with 'sets' (edited by hand?)")
    return ns


def export_pt(ns: NeuronSets, path, *, kind: str = "all") -> Path:
    """The released mask layout: list over languages of list over layers of LongTensor.

    kind "all" exports `sets` (what the study released); "specific" only the N = 1 part.
    """
    import torch

    sets = ns.sets if kind == "all" else ns.split(kind)
    mask = [[torch.as_tensor(a, dtype=torch.long) for a in sets[lang]] for lang in ns.languages]
    buffer = io.BytesIO()  # small; written by Python so a full disk is an OSError, not torch's RuntimeError
    torch.save(mask, buffer)
    with atomic_file(path, "pt") as tmp:
        tmp.write_bytes(buffer.getvalue())
    return Path(path)
