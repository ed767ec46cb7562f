"""The one config mechanism: YAML presets in configs/ (shipped as lna.configs)."""
import fnmatch
from functools import lru_cache
from importlib import resources

import yaml

from lna.errors import LnaError


@lru_cache(maxsize=None)
def load(name: str) -> dict:
    """Read configs/<name>.yaml."""
    try:
        text = resources.files("lna.configs").joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LnaError(f"no preset file configs/{name}.yaml") from None
    return yaml.safe_load(text) or {}


def template_for(model: str, name: str | None = None) -> tuple[str, str]:
    """(template name, template text) for a model, or the named template."""
    cfg = load("models")
    if name is None:
        for entry in cfg["models"]:
            if fnmatch.fnmatch(model.lower(), entry["match"].lower()):
                name = entry["template"]
                break
    if name not in cfg["templates"]:
        raise LnaError(f"unknown prompt template {name!r}: use one of {', '.join(cfg['templates'])}")
    return name, cfg["templates"][name]
