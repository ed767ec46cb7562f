"""Shared test setup: Triton's CPU interpreter, the shared data folder, tiny models."""
import os
from pathlib import Path

# Must precede the import of any module defining @triton.jit kernels (environment.md).
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LNA_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The study's data beside the checkout (../shared/data); tests skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set LNA_SHARED_DATA)")
    return SHARED_DATA
