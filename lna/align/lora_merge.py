"""Merged checkpoints: the base weights plus the LoRA update, written as a plain model folder
(config, safetensors, tokenizer) that every lna command loads like any other model.

The merge is computed on the side (W + scaling * B @ A in float32, cast to the saved dtype)
and never touches the weights being trained; the model being trained keeps its adapter.
"""
import copy
import json
import os
import shutil
from pathlib import Path

DTYPES = ("float32", "bfloat16", "float16")


def merged_state_dict(peft_model, dtype) -> tuple[dict, dict]:
    """(state dict of the merged model with the base architecture's keys, stats) where stats
    counts the elements of the adapted weights that differ from the base in `dtype`."""
    import torch
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    adapter = peft_model.active_adapter
    sd = {}
    for key, value in base.state_dict().items():
        if ".lora_" not in key:
            sd[key.replace(".base_layer.", ".")] = value.to(dtype) if value.is_floating_point() else value
    changed = total = weights = 0
    with torch.no_grad():
        for name, module in base.named_modules():
            if isinstance(module, LoraLayer) and adapter in module.lora_A:
                w = module.get_base_layer().weight
                merged = (w.float() + module.get_delta_weight(adapter).float()).to(dtype)
                changed += int((merged != w.to(dtype)).sum())
                total += w.numel()
                weights += 1
                sd[f"{name}.weight"] = merged
    return sd, {"weights": weights, "elements": total, "changed": changed}


def save_merged(peft_model, tokenizer, out, *, dtype: str, provenance: dict) -> dict:
    """Write the merged model to folder `out` atomically (a hidden folder renamed into place).
    Its config records where it came from (`lna_alignment`), with use_cache back on."""
    import torch

    out = Path(out)
    sd, stats = merged_state_dict(peft_model, getattr(torch, dtype))
    base = peft_model.get_base_model()
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        base.save_pretrained(tmp, state_dict=sd)
        config = copy.deepcopy(base.config)
        config.use_cache = True  # training turns it off; generation (lna-eval, sampling) wants it
        config.dtype = dtype
        config.lna_alignment = {**provenance, "merged": stats}
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if out.exists():  # a rerun writes the same step again: replace it whole
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return stats


def provenance_of(folder) -> dict | None:
    """The `lna_alignment` record of a merged checkpoint, or None."""
    try:
        return json.loads((Path(folder) / "config.json").read_text()).get("lna_alignment")
    except (OSError, ValueError):
        return None
