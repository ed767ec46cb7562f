"""lna: language-neuron activation profiler.

Data flow (docs/design.md, "Data flow"): dataset -> prompts -> responses -> force-decoding runner with
counting MLPs -> count store -> identify -> neuron sets -> ablate / steer / analyse / report.

`lna.steer(model, ...)` applies a neuron intervention to a loaded transformers model in a
`with` block (lna.interventions.intervene); it is imported on first use, so `import lna` stays light.
"""
from lna._version import __version__
from lna.core.errors import LnaError

__all__ = ["__version__", "LnaError", "steer"]


def __getattr__(name):
    if name == "steer":
        from lna.interventions.intervene import steer

        return steer
    raise AttributeError(f"module 'lna' has no attribute {name!r}")
