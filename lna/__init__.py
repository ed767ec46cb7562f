"""lna: language-neuron activation profiler.

Data flow (docs/design.md, "Data flow"): dataset -> prompts -> responses -> force-decoding runner with
counting MLPs -> count store -> identify -> neuron sets -> ablate / steer / analyse / report.

The Python API (docs/api.md) - the CLIs' engines, for notebooks:
    lna.profile(model, dataset, langs=..., out=...) -> Store     (lna-profile)
    lna.open(path) -> Store                                       (a count store)
    lna.identify(store, ...) -> NeuronSets                        (lna-identify)
    lna.ablate(model, neurons, responses, ...) -> ppl DataArray   (lna-ablate)
    lna.count(model, langs) -> Counter                            (counting inside your own code)
    lna.steer(model, ...)                                         (interventions in a `with` block)
Each is imported on first use, so `import lna` stays light (no torch, no numpy).
"""
from lna._version import __version__
from lna.core.errors import LnaError

# name -> the module that defines it (loaded on first access: lna.__getattr__)
_API = {
    "profile": "lna.api.store", "open": "lna.api.store", "Store": "lna.api.store",
    "identify": "lna.api.sets", "NeuronSets": "lna.api.sets",
    "ablate": "lna.api.ablate",
    "count": "lna.api.count", "Counter": "lna.api.count",
    "steer": "lna.interventions.intervene",
}

__all__ = ["__version__", "LnaError", *_API]


def __getattr__(name):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'lna' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_API))
