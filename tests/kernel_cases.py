"""Inputs shared by the kernel tests (test_silu_mul*.py, test_gemm_silu_mul.py), and the
error rules of tolerance (one home, also used by the GPU check) as assertions."""
import torch

from tolerance import check_output, check_sums

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ACTIVATIONS = ("silu", "gelu_tanh")


def make_inputs(n_tokens, n_neurons, dtype, *, strided, langs, masks, n_langs=3, n_masks=4, seed=0):
    """Fresh random inputs; gate holds exact zeros of both signs (0 does not fire).

    langs: "all" (every token counted), "none", or "mixed" (several languages and -1);
    masks: None, "empty", "full", "random" (30% of neurons per mask row), or "set" (random
    rows whose masked neurons are set to `values`, else None)."""
    gen = torch.Generator().manual_seed(seed)
    if strided:  # halves of vLLM's packed [T, 2I] gate_up
        packed = (torch.randn(n_tokens, 2 * n_neurons, generator=gen) * 3).to(dtype)
        gate, up = packed[:, :n_neurons], packed[:, n_neurons:]
    else:
        gate = (torch.randn(n_tokens, n_neurons, generator=gen) * 3).to(dtype)
        up = (torch.randn(n_tokens, n_neurons, generator=gen) * 3).to(dtype)
    zeros = torch.rand(n_tokens, n_neurons, generator=gen) < 0.05
    gate.masked_fill_(zeros, 0.0)
    gate.masked_fill_(zeros & (torch.rand(n_tokens, n_neurons, generator=gen) < 0.5), -0.0)

    lang_ids = {
        "all": torch.randint(0, n_langs, (n_tokens,), generator=gen),
        "none": torch.full((n_tokens,), -1),
        "mixed": torch.randint(-1, n_langs, (n_tokens,), generator=gen),
    }[langs].to(torch.int32)
    counts = torch.randint(0, 1000, (n_langs, n_neurons), generator=gen)

    mask_table = mask_ids = values = None
    if masks is not None:
        mask_table = {
            "empty": torch.zeros(n_masks, n_neurons, dtype=torch.bool),
            "full": torch.ones(n_masks, n_neurons, dtype=torch.bool),
            "random": torch.rand(n_masks, n_neurons, generator=gen) < 0.3,
            "set": torch.rand(n_masks, n_neurons, generator=gen) < 0.3,
        }[masks]
        mask_ids = torch.randint(-1, n_masks, (n_tokens,), generator=gen)  # several ids in one batch
        if masks == "set":
            values = make_values(n_masks, n_neurons, gen)
    return gate, up, lang_ids, counts, mask_table, mask_ids, values


def make_values(n_masks, n_neurons, gen):
    """float32 intervention values as steering uses them (means of activations, multiples of
    them): mostly not representable in 16 bits (rounding tested), a few exact zeros, one row
    of large ones."""
    values = torch.randn(n_masks, n_neurons, generator=gen) * 2
    values[torch.rand(n_masks, n_neurons, generator=gen) < 0.1] = 0.0
    values[-1] *= 50
    return values


def make_sum_table(n_langs, n_neurons, gen, dtype=torch.float64):
    """A sums table with random starting values, so that `+=` is checked."""
    return (torch.rand(n_langs, n_neurons, generator=gen, dtype=torch.float64) * 100).to(dtype)


def assert_dtype_rule(out, gate, up, masks, mask_ids, activation="silu", values=None):
    """The output rule (tolerance.check_output)."""
    report = check_output(out, gate, up, masks, mask_ids, activation, values)
    assert report["ok"], report["why"]


def assert_sums_rule(table, initial, gate, lang_ids, activation="silu", *, active=False, partials=1):
    """The sums rule (tolerance.check_sums)."""
    report = check_sums(table, initial, gate, lang_ids, activation, active=active, partials=partials)
    assert report["ok"], report["why"]


def random_gates(tokens: int, width: int, langs: int, seed: int):
    """A silu_mul case: gate and up standard normal [tokens, width], language ids in
    [-1, langs) (-1: not counted), and the generator that drew them (for more)."""
    gen = torch.Generator().manual_seed(seed)
    gate, up = torch.randn(2, tokens, width, generator=gen).unbind(0)
    return gate, up, torch.randint(-1, langs, (tokens,), generator=gen), gen
