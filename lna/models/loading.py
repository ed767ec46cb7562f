"""Resolve a model argument (Hugging Face id, local folder, built-in tiny model) and load it
on a device (parse_device, check_device: below the runners, which choose the device through them).

Hugging Face ids resolve through the local cache only: lna never downloads weights behind
the user's back, and says how to get them when they are missing.
"""
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from lna.models import families, moe
from lna.core.errors import LnaError, first_line

SUPPORTED = families.supported()
DTYPES = ("float32", "bfloat16", "float16")
WEIGHTS = ("*.safetensors", "pytorch_model*.bin")  # what transformers and vLLM load
DEVICES = "cpu, cuda or cuda:N"


@dataclass(frozen=True)
class ModelInfo:
    name: str  # as the user gave it
    path: Path  # local folder with config.json
    architecture: str
    layers: int
    neurons: int
    revision: str  # snapshot hash for hub models, "local" otherwise
    # how its MLPs are counted (lna.models.families); models built in memory are Llama-like
    family: families.Family = field(default=families.BY_TYPE["llama"])

    @property
    def display(self) -> str:
        """The model's name for titles: the hub id, not a cache or temporary path."""
        return display_name(self.name)


def display_name(model: str) -> str:
    """A hub id or lna:name as given; "org/name" for a Hugging Face cache snapshot path;
    the folder's name for any other local path."""
    text = str(model).rstrip("/")
    m = re.search(r"models--([^/]+?)--([^/]+)(/snapshots/[^/]+)?$", text)
    if m:
        return f"{m.group(1)}/{m.group(2)}"
    if text.startswith("lna:") or (text.count("/") == 1 and not text.startswith((".", "/", "~"))
                                   and not Path(text).expanduser().exists()):
        return text
    return Path(text).name or text


def cache_dir() -> Path:
    return Path(os.environ.get("LNA_CACHE", Path.home() / ".cache" / "lna"))


def resolve(model: str, revision: str | None = None, *, experts: bool | None = False) -> ModelInfo:
    """Find the model's folder and check, from its config alone, that lna can profile it.
    `revision` (a hub model's branch, tag or commit) is looked up in the local cache.
    experts=True: a mixture-of-experts model, counted per expert (lna.models.moe); None:
    whichever the config describes (dense models as without it)."""
    if revision is not None and (model.startswith("lna:") or Path(model).expanduser().is_dir()):
        raise LnaError(f"--revision {revision}: {model} is not a Hugging Face id; revisions are for hub models")
    if model.startswith("lna:"):
        path, revision = _builtin(model[4:]), "builtin"
    elif Path(model).expanduser().is_dir():
        path, revision = Path(model).expanduser().resolve(), "local"
    else:
        path, revision = _from_hub_cache(model, revision)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise LnaError(f"{path}: no config.json; give a Hugging Face model folder or id")
    try:
        cfg = json.loads(config_file.read_text())
    except ValueError:
        raise LnaError(f"{config_file}: not valid JSON") from None
    if not isinstance(cfg, dict):
        raise LnaError(f"{config_file}: not a model config (a JSON object)")
    arch = (cfg.get("architectures") or [cfg.get("model_type", "?")])[0]
    if experts or (experts is None and moe.is_moe(cfg)):
        family = moe.identify(cfg, model)
    else:
        family = families.identify(cfg, model)
    text = families.text_config(cfg)
    if not any(next(path.glob(pattern), None) for pattern in WEIGHTS):
        raise LnaError(f"{path}: has config.json but no weights ({' or '.join(WEIGHTS)}); "
                       + _complete_it(model, revision))
    # A MoE model's widths come from its loaded layers (lna.models.moe.layout).
    return ModelInfo(model, path, arch, text["num_hidden_layers"], text.get("intermediate_size", 0), revision, family)


def _complete_it(model: str, revision: str) -> str:
    if revision == "local":
        return "copy the model's remaining files into that folder, or give the folder that has them"
    return f"download the whole model with `huggingface-cli download {model}`"


def _builtin(name: str) -> Path:
    from lna.models.tiny import PRESETS, build_tiny

    if name not in PRESETS:
        raise LnaError(f"unknown built-in model lna:{name}; built-in models: "
                       + ", ".join(f"lna:{n}" for n in PRESETS))
    import shutil

    from lna.core.atomic import writing

    path = cache_dir() / "models" / name
    if not (path / "config.json").is_file():
        tmp = path.with_name(f".{name}.tmp-{os.getpid()}")
        try:
            with writing(path):  # a full or read-only cache: one line (set LNA_CACHE elsewhere)
                build_tiny(tmp, **PRESETS[name])
                path.parent.mkdir(parents=True, exist_ok=True)
            try:
                tmp.rename(path)
            except OSError:  # another process built it first
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _from_hub_cache(model: str, revision: str | None = None) -> tuple[Path, str]:
    if model.count("/") != 1 or model.startswith(("/", ".", "~")):
        raise LnaError(f"{model}: no such folder, and not a Hugging Face id of the form org/name")
    rev = f" --revision {revision}" if revision else ""
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(model, revision=revision, local_files_only=True))
    except Exception:  # not cached (or hub library refused): tell the user how to get it
        what = f"{model} at revision {revision}" if revision else model
        raise LnaError(
            f"{what} is not in the local Hugging Face cache: download it with "
            f"`huggingface-cli download {model}{rev}` (gated models such as Llama and Gemma need "
            f"their license accepted on huggingface.co and `huggingface-cli login` first), "
            f"or pass a local folder"
        ) from None
    return path, path.name


def parse_device(device: str | None) -> str | None:
    """`device` normalised (cpu, cuda, cuda:N) or None; a clear error for anything else.
    Needs no torch: the CLI checks the spelling before anything loads."""
    if device is None:
        return None
    spelled = device.strip().lower()
    if not re.fullmatch(r"cpu|cuda(:\d+)?", spelled):
        raise LnaError(f"--device {device!r}: unknown device; use {DEVICES}")
    return spelled


def check_device(device: str | None) -> str:
    """The device to run on: `device` if torch can use it, else one clear error; None picks
    the GPU where there is one, else the CPU."""
    import torch

    device = parse_device(device)
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            why = "this torch is a CPU-only build" if torch.version.cuda is None else "no GPU is visible"
            raise LnaError(f"--device {device}: torch sees no CUDA device ({why}); use --device cpu, "
                           "or run where a GPU and a CUDA build of torch are")
        n, index = torch.cuda.device_count(), int(device.partition(":")[2] or 0)
        if index >= n:
            raise LnaError(f"--device {device}: there {'is' if n == 1 else 'are'} {n} CUDA device"
                           f"{'' if n == 1 else 's'} (cuda:0..cuda:{n - 1})")
    return device


def load(info: ModelInfo, *, device: str = "cpu", dtype: str = "float32"):
    """(model in eval mode on `device`, tokenizer); its MLPs checked against its family."""
    import torch
    from safetensors import SafetensorError
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # lna shows its own progress; one bar at a time
    if dtype not in DTYPES:
        raise LnaError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    device = check_device(device)
    tokenizer = load_tokenizer(info)
    try:
        config = AutoConfig.from_pretrained(info.path)
        model = AutoModelForCausalLM.from_pretrained(
            info.path, config=config, dtype=getattr(torch, dtype),
            attn_implementation=families.attn_implementation(config))
    except (OSError, ValueError, SafetensorError) as err:  # damaged or incomplete weight files
        raise LnaError(f"{info.path}: could not load the weights ({first_line(err)}); "
                       + _complete_it(info.name, info.revision)) from None
    model = model.to(device).eval()
    if not isinstance(info.family, moe.MoEFamily):  # MoE models: checked by lna.runners.moe
        families.check(model, info.family, info.name)
    return model, tokenizer


def load_tokenizer(info: ModelInfo):
    """The model's tokenizer; one clear line when its folder has none lna can load."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(info.path)
    except (OSError, ValueError, TypeError, ImportError) as err:
        raise LnaError(f"{info.path}: no tokenizer that transformers can load ({first_line(err)}); "
                       "it needs tokenizer.json (or tokenizer.model and tokenizer_config.json): "
                       + _complete_it(info.name, info.revision)) from None
