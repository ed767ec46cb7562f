"""What every runner (transformers, vLLM) takes and gives.

A runner force-decodes `Sample`s through a model whose MLPs count gate > 0 (SiLU(gate) > 0,
or GELU(gate) > 0 for Gemma: the same rule; lna.models.families) on response tokens only, per
language, and returns the counts of that call. The profile
driver (lna.profiling.profile) owns batching into resumable chunks, the store and progress.
"""
from typing import Protocol, Sequence

import numpy as np

from lna.core.errors import LnaError
from lna.inputs.samples import Sample


class Runner(Protocol):
    layers: int
    neurons: int

    def count(self, samples: Sequence[Sample], languages: Sequence[str], *, sums: bool = False) -> tuple:
        """Force-decode `samples`; return (counts int64 [layer, language, neuron],
        tokens int64 [language]) for exactly these samples, languages in `languages` order;
        with sums=True also (sums, active_sums) float64 [layer, language, neuron]: the sum
        of act(gate) over the counted tokens, and over those with gate > 0."""

    def generate(self, prompts: Sequence[Sequence[int]], *, n: int, temperature: float, top_p: float,
                 max_new_tokens: int, seed: int | Sequence[int], masks: np.ndarray | None = None,
                 values: np.ndarray | None = None, mask_ids: Sequence[int] | None = None) -> list[list[list[int]]]:
        """Sample `n` responses (token ids, no prompt, EOS stripped) for each prompt; prompt
        i with the intervention masks[mask_ids[i]] (as in nll; -1: none) on every token.
        seed: one per prompt, or an int (see lna.inputs.samples.sample_seeds); response k of prompt i is drawn
        from (seed of prompt i) + k alone, so it does not depend on which prompts share its batch."""

    def generate_counting(self, prompts: Sequence[Sequence[int]], langs: Sequence[str], languages: Sequence[str], *,
                          n: int, temperature: float, top_p: float, max_new_tokens: int, seed: int | Sequence[int],
                          sums: bool = False) -> tuple:
        """`generate` (the same responses for the same seed), counting the responses while they
        are sampled: each response token goes through the MLPs once, when it is fed back
        during decoding (a token at the max_new_tokens limit is fed in one extra, dropped
        step; an EOS never), prompt tokens are not counted. langs[i]: language of prompt i.
        Returns (responses, counts int64 [layer, language, neuron], tokens int64 [language]),
        and with sums=True also (sums, active_sums) as `count` gives them, languages in
        `languages` order: what `count` gives for the same responses, up to gates within
        rounding of zero (decoding with a KV cache sums in another order)."""

    def nll(self, samples: Sequence[Sample], masks: np.ndarray, mask_ids: Sequence[int],
            values: np.ndarray | None = None) -> np.ndarray:
        """Sum of response-token negative log-likelihoods (fp32 logits, float64 sum) of each
        sample, with the neurons of `masks[mask_ids[i]]` (bool [n_masks, layer, neuron])
        deactivated for sample i (-1: none), on every token of the sample: act(gate) set to
        0, or to `values[mask_ids[i]]` (float32, shaped like masks) where values are given.
        Returns float64 [len(samples)]."""


def eos_ids(configured, tokenizer) -> set:
    """The tokens that end a response, as vLLM stops: the generation config's EOS ids and the
    tokenizer's (both backends cut responses at the same tokens)."""
    eos = {getattr(tokenizer, "eos_token_id", None)} - {None}  # a runner wrapped without a tokenizer: none
    eos.update(configured if isinstance(configured, list) else [] if configured is None else [configured])
    return eos


def check_interventions(masks, values, layers: int, neurons: int) -> tuple:
    """Masks bool [n_masks, layers, neurons] and values float32 shaped like them (or None), as
    every runner takes them; one line where they fit another model."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3 or masks.shape[1:] != (layers, neurons):
        raise LnaError(f"masks must be bool [n_masks, {layers}, {neurons}] for this model, "
                       f"got shape {masks.shape}; were the neuron sets made for another model?")
    if values is not None:
        values = np.ascontiguousarray(values, dtype=np.float32)
        if values.shape != masks.shape:
            raise LnaError(f"values must be shaped like masks {masks.shape}, got {values.shape}")
    return masks, values


def check_decoding(temperature: float, n: int) -> None:
    if temperature <= 0 and n > 1:
        raise LnaError(f"greedy decoding (temperature 0) gives one response, not {n}: "
                       "use --samples 1 or a temperature above 0")


def language_slots(langs, languages, prompts: int) -> dict:
    """generate_counting's language of each prompt, checked: {code: slot in `languages`}."""
    if len(langs) != prompts:
        raise LnaError(f"generate_counting: {len(langs)} languages for {prompts} prompts")
    slot = {code: i for i, code in enumerate(languages)}
    missing = sorted(set(langs) - set(slot))
    if missing:
        raise LnaError(f"generate_counting: prompts in {missing} but languages are {list(languages)}")
    return slot
