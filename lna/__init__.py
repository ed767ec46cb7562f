"""lna: language-neuron activation profiler.

Data flow (design.md): dataset -> prompts -> responses -> force-decoding runner with
counting MLPs -> count store -> identify -> neuron sets -> ablate / analyse / report.
"""
from lna._version import __version__
from lna.errors import LnaError

__all__ = ["__version__", "LnaError"]
