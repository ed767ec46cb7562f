"""Resolve a model argument (Hugging Face id, local folder, built-in tiny model) and load it.

Hugging Face ids resolve through the local cache only: lna never downloads weights behind
the user's back, and says how to get them when they are missing.
"""
import json
import os
from dataclasses import dataclass
from pathlib import Path

from lna.errors import LnaError

SUPPORTED = "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM and other decoders " \
            "whose MLP is down(SiLU(gate(x)) * up(x)) with gate_proj/up_proj/down_proj"
SILU = ("silu", "swish")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ModelInfo:
    name: str  # as the user gave it
    path: Path  # local folder with config.json
    architecture: str
    layers: int
    neurons: int
    revision: str  # snapshot hash for hub models, "local" otherwise


def cache_dir() -> Path:
    return Path(os.environ.get("LNA_CACHE", Path.home() / ".cache" / "lna"))


def resolve(model: str) -> ModelInfo:
    """Find the model's folder and check, from its config alone, that lna can profile it."""
    if model.startswith("lna:"):
        path, revision = _builtin(model[4:]), "builtin"
    elif Path(model).expanduser().is_dir():
        path, revision = Path(model).expanduser().resolve(), "local"
    else:
        path, revision = _from_hub_cache(model)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise LnaError(f"{path}: no config.json; give a Hugging Face model folder or id")
    try:
        cfg = json.loads(config_file.read_text())
    except ValueError:
        raise LnaError(f"{config_file}: not valid JSON") from None
    arch = (cfg.get("architectures") or [cfg.get("model_type", "?")])[0]
    act = cfg.get("hidden_act", cfg.get("hidden_activation"))
    if act not in SILU or "intermediate_size" not in cfg or "num_hidden_layers" not in cfg:
        raise LnaError(
            f"{model}: {arch} with activation {act!r} is not a SiLU-gated decoder; lna supports {SUPPORTED}"
        )
    return ModelInfo(model, path, arch, int(cfg["num_hidden_layers"]), int(cfg["intermediate_size"]), revision)


def _builtin(name: str) -> Path:
    from lna.tiny import PRESETS, build_tiny

    if name not in PRESETS:
        raise LnaError(f"unknown built-in model lna:{name}; built-in models: "
                       + ", ".join(f"lna:{n}" for n in PRESETS))
    path = cache_dir() / "models" / name
    if not (path / "config.json").is_file():
        tmp = path.with_name(f".{name}.tmp-{os.getpid()}")
        build_tiny(tmp, **PRESETS[name])
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            tmp.rename(path)
        except OSError:  # another process built it first
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _from_hub_cache(model: str) -> tuple[Path, str]:
    if model.count("/") != 1 or model.startswith(("/", ".", "~")):
        raise LnaError(f"{model}: no such folder, and not a Hugging Face id of the form org/name")
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(model, local_files_only=True))
    except Exception:  # not cached (or hub library refused): tell the user how to get it
        raise LnaError(
            f"{model} is not in the local Hugging Face cache: download it with "
            f"`huggingface-cli download {model}` (or pass a local folder)"
        ) from None
    return path, path.name


def load(info: ModelInfo, *, device: str = "cpu", dtype: str = "float32"):
    """(model in eval mode on `device`, tokenizer) with sdpa attention (lna passes 4D masks)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # lna shows its own progress; one bar at a time
    if dtype not in DTYPES:
        raise LnaError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LnaError("--device cuda asked for, but torch sees no CUDA device; use --device cpu")
    tokenizer = AutoTokenizer.from_pretrained(info.path)
    model = AutoModelForCausalLM.from_pretrained(
        info.path, dtype=getattr(torch, dtype), attn_implementation="sdpa"
    ).to(device).eval()
    for i, layer in enumerate(model.model.layers):
        mlp = getattr(layer, "mlp", None)
        if not all(hasattr(mlp, a) for a in ("gate_proj", "up_proj", "down_proj")):
            raise LnaError(f"{info.name}: layer {i} has no gate_proj/up_proj/down_proj MLP; lna supports {SUPPORTED}")
    return model, tokenizer
