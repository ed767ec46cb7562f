"""Shared test setup: Triton's CPU interpreter, the shared data folder, tiny models."""
import os
from pathlib import Path

# Must precede the import of any module defining @triton.jit kernels (docs/design.md, "Testing").
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LNA_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine two threads
    contend with other work (3-5x slower seen); results do not depend on it."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The study's data beside the checkout (../shared/data); tests skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set LNA_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Random-weight Llama and Mistral models (head_dim 32) with a byte tokenizer, on disk."""
    from lna.models.tiny import build_tiny

    root = tmp_path_factory.mktemp("models")
    return {arch: str(build_tiny(root / arch, arch, hidden=64, layers=3, intermediate=96, heads=2,
                                 kv_heads=1, seed=seed))
            for seed, arch in enumerate(["llama", "mistral"])}


def random_samples(seed, languages, questions=9, vocab=259, max_prompt=40, max_response=50):
    """Samples with shared prompts, mixed lengths, several responses per prompt and languages."""
    import numpy as np

    from lna.inputs.samples import Sample

    rng = np.random.default_rng(seed)
    out = []
    for q in range(questions):
        prompt = tuple([1] + rng.integers(3, vocab, rng.integers(2, max_prompt)).tolist())
        lang = languages[q % len(languages)]
        for j in range(int(rng.integers(1, 5))):
            response = tuple(rng.integers(3, vocab, rng.integers(1, max_response)).tolist())
            out.append(Sample(f"q{q}/{j}", lang, prompt, response, group=f"q{q}"))
    return out
