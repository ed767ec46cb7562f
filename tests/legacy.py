"""Artefacts as lna 0.1 (format lna-counts/1) wrote them, for the compatibility tests.

`write_store` repeats that release's save_store call for call (zarr writing straight to the
folder, chunks equal to the fill value skipped, no integrity record, samples recorded by
position); `fingerprint` is its model fingerprint, computed from loaded tensors as its
transformers runner did.
"""
import base64
import hashlib
import json
from pathlib import Path

import numpy as np


def write_store(path, counts, tokens, languages, meta, samples=None, complete=True):
    import zarr
    from zarr.codecs import BloscCodec

    meta = {"counted": "response-tokens", "activation": "silu(gate)>0", **meta,
            "layers": counts.shape[0], "neurons": counts.shape[2]}
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    codec = BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")
    L, K, neurons = counts.shape
    dims = ("layer", "language", "neuron")
    root.create_array("counts", shape=counts.shape, dtype="int64", chunks=(L, 1, neurons), compressors=codec,
                      dimension_names=dims)[...] = counts
    root.create_array("tokens", shape=(K,), dtype="int64", dimension_names=("language",))[...] = tokens
    root.create_array("language", shape=(K,), dtype=str, dimension_names=("language",))[...] = np.array(
        languages, dtype=object)
    root.create_array("layer", shape=(L,), dtype="int64", dimension_names=("layer",))[...] = np.arange(L)
    root.create_array("neuron", shape=(neurons,), dtype="int64", compressors=codec,
                      dimension_names=("neuron",))[...] = np.arange(neurons)
    root.attrs.update({"format": "lna-counts/1", "lna_version": "0.1.0", "languages": list(languages),
                       "complete": complete, "meta": meta, "samples": samples or {}})
    return path


def part(source, done):
    """A manifest part of lna 0.1: samples by position in the run's list named `source`."""
    done = np.asarray(done, bool)
    bits = "all" if done.all() else base64.b64encode(np.packbits(done).tobytes()).decode()
    return {"source": source, "total": int(len(done)), "done": bits}


def fingerprint(model_path) -> str:
    """lna 0.1's fingerprint of a saved model, from the tensors transformers loads."""
    import torch
    from transformers import AutoModelForCausalLM

    net = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    cfg = json.loads((Path(model_path) / "config.json").read_text())
    for key in ("torch_dtype", "dtype", "transformers_version", "_name_or_path"):
        cfg.pop(key, None)
    h = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode())
    for w in (net.get_input_embeddings().weight, net.model.layers[-1].mlp.down_proj.weight):
        h.update(w.detach()[:4].to(torch.bfloat16).to(torch.float32).cpu().numpy().tobytes())
    return h.hexdigest()[:16]
