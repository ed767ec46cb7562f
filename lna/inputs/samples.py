"""What a runner force-decodes (`Sample`) and the seeds responses are drawn from.

Below the runners and the packing of samples into rows, so that the inputs that make
samples (lna.inputs.responses) and the runners that take them share one definition.
"""
import hashlib
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Sample:
    key: str  # stable id within its source, e.g. "mgsm/en/17/3"
    lang: str  # language code (lna.core.languages)
    prompt: tuple  # token ids of the prompt, BOS included; never counted
    response: tuple  # token ids of the response; each one is counted once
    group: str = ""  # samples with the same group share the prompt (processed once)


def sample_seeds(seed, prompts: int, n: int) -> list[int]:
    """The seed of each prompt's first response (response k: that + k): `seed` itself where it
    gives one per prompt; for an int, seed + i * n for prompt i, so that no two responses share one."""
    if isinstance(seed, (int, np.integer)):
        return [int(seed) + i * n for i in range(prompts)]
    seeds = [int(s) for s in seed]
    if len(seeds) != prompts:
        raise ValueError(f"{len(seeds)} seeds for {prompts} prompts")
    return seeds


def question_seed(seed: int, key: str) -> int:
    """A question's sampling seed from the run's --seed and its key alone: the same question
    draws the same responses in any shard, batch or order of the data (below 2**31 - 2**16,
    so that its n responses' seeds stay in every sampler's range)."""
    digest = hashlib.sha256(f"{int(seed)}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**31 - 2**16)
