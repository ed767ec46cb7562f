"""Force-decoding runners (transformers: hf.py; vLLM: vllm.py) and the backend choice."""
import importlib.util

from lna.core.errors import LnaError


def make_runner(model: str, *, backend: str = "auto", device: str | None = None, dtype: str | None = None,
                token_budget: int | None = None, max_row_tokens: int = 2048, revision: str | None = None,
                compiled: bool = False, info=None):
    """(runner, backend name, dtype) for --backend auto|hf|vllm on --device. compiled: vLLM
    without enforce_eager (torch.compile, and CUDA graphs on a GPU; lna.runners.vllm). `info`:
    the model already resolved (lna.models.loading.resolve), so that it is resolved once.

    Defaults: the GPU where there is one; bfloat16 there, float32 on CPU; auto means vLLM
    where it is installed, a GPU is present and vLLM runs the model's family, else
    transformers.
    """
    from lna.models import loading, moe

    device = loading.check_device(device)
    dtype = dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    if backend not in ("auto", "hf", "vllm"):
        raise LnaError(f"unknown backend {backend!r}: use auto, hf or vllm")
    vllm_installed = importlib.util.find_spec("vllm") is not None
    info = info or loading.resolve(model, revision, experts=None)
    family = info.family
    experts = isinstance(family, moe.MoEFamily)
    if backend == "vllm" and experts:
        raise LnaError(f"--backend vllm: {moe.VLLM_REFUSAL}; use --backend hf")
    if backend == "vllm" and not family.vllm:
        raise LnaError(f"--backend vllm: vLLM 0.32 does not run {family.name.split(' (')[0]} models; use --backend hf")
    if backend == "vllm" or (backend == "auto" and vllm_installed and device.startswith("cuda") and family.vllm):
        if not vllm_installed:
            raise LnaError("--backend vllm: vllm is not installed (pip install 'lna[vllm]'); or use --backend hf")
        from lna.runners.vllm import VllmRunner

        runner = VllmRunner(model, device=device, dtype=dtype, revision=revision, enforce_eager=not compiled,
                            info=info)
        return runner, "vllm", dtype
    if compiled:
        raise LnaError("--vllm-compiled applies to the vLLM backend; this run uses transformers (hf): "
                       "pass --backend vllm, or drop --vllm-compiled")
    from lna.runners.hf import HFRunner
    from lna.runners.moe import MoERunner

    budget = token_budget or (16384 if device.startswith("cuda") else 2048)
    return (MoERunner if experts else HFRunner)(model, device=device, dtype=dtype, token_budget=budget,
                                                 max_row_tokens=max_row_tokens, revision=revision, info=info), "hf", dtype
