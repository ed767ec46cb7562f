"""silu_mul (Triton under TRITON_INTERPRET=1, and the vectorised torch path) against the
naive reference: exact counts, outputs within the dtype rule, masks and set interventions,
strided inputs, for both activations (SiLU and GELU-tanh).

The output rule (kernel_cases.py): a kernel's error against a float64 computation is at
most twice that of plain torch in the same dtype. The torch path replicates the
reference's rounding, so its output is checked for bit equality. Outputs are poisoned with
NaN before the Triton call so an unwritten element fails, and counts start from random
values so `+=` is checked.
"""
import itertools

import pytest
import torch
import torch.nn.functional as F
from kernel_cases import ACTIVATIONS, DTYPES, assert_dtype_rule, make_inputs, random_gates

from lna.kernels import silu_mul, silu_mul_native, silu_mul_packed
from lna.kernels.silu_mul_torch import silu_mul_torch
from lna.kernels.silu_mul_triton import LaunchConfig, silu_mul_triton

# GELU's exp(-2y) overflows to inf for x < -10 in the interpreter's numpy, as intended (x / inf = -0).
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")

LANG_CASES = ("all", "none", "mixed")  # every token counted / no token counted / several languages and -1
MASK_CASES = (None, "empty", "full", "random", "set")


def run_case(backend, n_tokens, n_neurons, dtype, strided, langs, masks, seed, config=None, activation="silu"):
    gate, up, lang_ids, counts, mask_table, mask_ids, values = make_inputs(
        n_tokens, n_neurons, dtype, strided=strided, langs=langs, masks=masks, seed=seed)
    expected_counts = counts.clone()
    expected = silu_mul_native(gate, up, lang_ids, expected_counts, mask_table, mask_ids, values=values,
                               activation=activation)
    if backend == "triton":
        out = torch.full((n_tokens, n_neurons), float("nan"), dtype=dtype)
        result = silu_mul_triton(gate, up, lang_ids, counts, mask_table, mask_ids, values=values,
                                 activation=activation, config=config, out=out)
        assert result is out
        assert_dtype_rule(out, gate, up, mask_table, mask_ids, activation, values)
    else:
        out = silu_mul(gate, up, lang_ids=lang_ids, counts=counts, masks=mask_table, mask_ids=mask_ids,
                       values=values, activation=activation, backend="torch")
        assert torch.equal(out, expected), "the torch path must replicate the reference bit for bit"
    assert torch.equal(counts, expected_counts)


# The full grid over shapes and dtypes; the other factors cycle through their values across
# it (each value meets every dtype, and most shapes), which keeps the interpreter run short.
GRID = [
    (t, i, dtype, (s + d) % 2 == 1, LANG_CASES[(s + d) % 3], MASK_CASES[(s + 2 * d) % 5])
    for s, (t, i) in enumerate(itertools.product((1, 7, 83, 256), (1, 13, 128, 1000)))
    for d, dtype in enumerate(DTYPES)
]


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("n_tokens,n_neurons,dtype,strided,langs,masks", GRID)
def test_grid(backend, activation, n_tokens, n_neurons, dtype, strided, langs, masks):
    run_case(backend, n_tokens, n_neurons, dtype, strided, langs, masks, seed=n_tokens * 7919 + n_neurons,
             activation=activation)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("langs,masks", list(itertools.product(LANG_CASES, MASK_CASES)))
def test_every_count_and_mask_case(backend, dtype, langs, masks):
    """Each case with one activation (alternating: the grid crosses them with every shape)."""
    code = 10 * LANG_CASES.index(langs) + MASK_CASES.index(masks)
    activation = ACTIVATIONS[(code + DTYPES.index(dtype)) % 2]
    run_case(backend, 83, 128, dtype, True, langs, masks, seed=code, activation=activation)


@pytest.mark.parametrize("config", [
    LaunchConfig(16, 16, 16),  # many programs: atomics from several token chunks per column
    LaunchConfig(32, 64, 64),
    LaunchConfig(16, 128, 40),  # chunks that end inside a tile
])
def test_triton_multi_program_configs(config):
    run_case("triton", 150, 100, torch.bfloat16, True, "mixed", "random", seed=5, config=config)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_many_languages_and_int64_ids(backend):
    """More languages than the 16 rows of the padded one-hot, int64 ids and counts."""
    gate, up, lang_ids, _ = random_gates(97, 300, 21, seed=3)
    counts = torch.zeros(21, 300, dtype=torch.int64)
    expected = counts.clone()
    silu_mul_native(gate, up, lang_ids, expected)
    silu_mul(gate, up, lang_ids=lang_ids, counts=counts, backend=backend)
    assert torch.equal(counts, expected)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_int32_counts_accumulate_over_calls(backend):
    gen = torch.Generator().manual_seed(4)
    counts = torch.zeros(3, 50, dtype=torch.int32)
    expected = torch.zeros(3, 50, dtype=torch.int64)
    for _ in range(3):
        gate, up = torch.randn(2, 40, 50, generator=gen).bfloat16().unbind(0)
        lang_ids = torch.randint(-1, 3, (40,), generator=gen)
        silu_mul(gate, up, lang_ids=lang_ids, counts=counts, backend=backend)
        silu_mul_native(gate, up, lang_ids, expected)
    assert counts.dtype == torch.int32 and torch.equal(counts.long(), expected)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_packed_and_leading_dims(backend):
    """vLLM's packed [T, 2I] through silu_mul_packed, and HF's [B, S, I] with ids [B, S]."""
    gen = torch.Generator().manual_seed(6)
    gate_up = torch.randn(2, 9, 2 * 40, generator=gen).bfloat16()
    lang_ids = torch.randint(-1, 2, (2, 9), generator=gen)
    masks = torch.rand(2, 40, generator=gen) < 0.5
    mask_ids = torch.randint(-1, 2, (2, 9), generator=gen)
    counts, expected_counts = torch.zeros(2, 40, dtype=torch.int64), torch.zeros(2, 40, dtype=torch.int64)
    out = silu_mul_packed(gate_up, lang_ids=lang_ids, counts=counts, masks=masks, mask_ids=mask_ids,
                          backend=backend)
    flat = gate_up.reshape(18, 80)
    silu_mul_native(flat[:, :40], flat[:, 40:], lang_ids.reshape(-1), expected_counts, masks,
                               mask_ids.reshape(-1))
    assert out.shape == (2, 9, 40)
    assert torch.equal(counts, expected_counts)
    assert_dtype_rule(out.reshape(18, 40), flat[:, :40], flat[:, 40:], masks, mask_ids.reshape(-1))


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_counting_ignores_masks(backend):
    """A masked neuron's output is zero but its raw gate > 0 still counts."""
    gate = torch.tensor([[1.0, -1.0, 2.0], [0.5, 0.0, -3.0]])
    up = torch.ones(2, 3)
    masks = torch.ones(1, 3, dtype=torch.bool)
    counts = torch.zeros(1, 3, dtype=torch.int64)
    out = silu_mul(gate, up, lang_ids=torch.tensor([0, 0]), counts=counts, masks=masks,
                   mask_ids=torch.tensor([0, -1]), backend=backend)
    assert (out[0] == 0).all() and torch.equal(out[1], F.silu(gate[1]))
    assert counts.tolist() == [[2, 0, 1]]


def test_plain_call_matches_torch():
    gate, up = torch.randn(2, 5, 7).unbind(0)
    assert torch.equal(silu_mul(gate, up), F.silu(gate) * up)  # CPU: the torch path
    assert_dtype_rule(silu_mul(gate, up, backend="triton"), gate, up, None, None)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_empty_batch(backend):
    counts = torch.zeros(2, 8, dtype=torch.int64)
    out = silu_mul(torch.empty(0, 8), torch.empty(0, 8), lang_ids=torch.empty(0, dtype=torch.int32),
                   counts=counts, backend=backend)
    assert out.shape == (0, 8) and not counts.any()
    no_neurons = silu_mul(torch.empty(2, 3, 0), torch.empty(2, 3, 0), lang_ids=torch.zeros(2, 3, dtype=torch.int32),
                          counts=torch.zeros(1, 0, dtype=torch.int64), backend=backend)
    assert no_neurons.shape == (2, 3, 0)


def test_torch_path_needs_no_loop_over_tokens():
    """Vectorised: a batch of 4096 tokens costs a handful of torch ops, not one per token."""
    gate, up = torch.randn(2, 4096, 64).unbind(0)
    counts = torch.zeros(10, 64, dtype=torch.int64)
    lang_ids, mask_ids = torch.randint(-1, 10, (4096,)), torch.randint(-1, 3, (4096,))
    masks = torch.rand(3, 64) < 0.5
    with torch.profiler.profile() as prof:
        silu_mul_torch(gate, up, lang_ids, counts, masks, mask_ids)
    assert len(prof.events()) < 200


def test_torch_path_blocks_and_flushes(monkeypatch):
    """Small token blocks, blocks with no counted token, and float32 accumulators emptied
    before they could lose exactness: the counts stay exact."""
    import lna.kernels.silu_mul_torch as module

    monkeypatch.setattr(module, "BLOCK_ELEMENTS", 8 * 30)  # 8 tokens per block
    monkeypatch.setattr(module, "EXACT_LIMIT", 20)
    gate, up, lang_ids, gen = random_gates(70, 30, 3, seed=8)
    lang_ids[16:40] = -1  # whole blocks of prompt tokens
    counts = torch.randint(0, 9, (3, 30), generator=gen, dtype=torch.int32)
    expected = counts.clone()
    out = silu_mul_torch(gate, up, lang_ids, counts)
    assert torch.equal(out, silu_mul_native(gate, up, lang_ids, expected))
    assert torch.equal(counts, expected)


BAD_INPUTS = [
    (dict(gate=torch.ones(3, 4), up=torch.ones(3, 5)), ValueError, "same shape"),
    (dict(gate=torch.ones(3, 4, dtype=torch.float64), up=torch.ones(3, 4, dtype=torch.float64)), TypeError, "dtype"),
    (dict(gate=torch.ones(3, 4), up=torch.ones(3, 4).half()), TypeError, "dtype"),
    (dict(gate=[1.0], up=torch.ones(1)), TypeError, "torch.Tensor"),
    (dict(lang_ids=torch.zeros(3, dtype=torch.int32)), ValueError, "go together"),
    (dict(counts=torch.zeros(2, 4, dtype=torch.int64)), ValueError, "go together"),
    (dict(lang_ids=torch.zeros(2, dtype=torch.int32), counts=torch.zeros(2, 4, dtype=torch.int64)),
     ValueError, "one entry per token"),
    (dict(lang_ids=torch.zeros(3), counts=torch.zeros(2, 4, dtype=torch.int64)), TypeError, "integer"),
    (dict(lang_ids=torch.zeros(3, dtype=torch.int32), counts=torch.zeros(2, 4)), TypeError, "int32 or int64"),
    (dict(lang_ids=torch.zeros(3, dtype=torch.int32), counts=torch.zeros(2, 5, dtype=torch.int64)),
     ValueError, "n_langs, 4"),
    (dict(lang_ids=torch.tensor([0, 2, -1]), counts=torch.zeros(2, 4, dtype=torch.int64)), ValueError, r"\[-1, 2\)"),
    (dict(lang_ids=torch.tensor([0, -2, 1]), counts=torch.zeros(2, 4, dtype=torch.int64)), ValueError, r"\[-1, 2\)"),
    (dict(masks=torch.zeros(2, 4, dtype=torch.bool)), ValueError, "go together"),
    (dict(masks=torch.zeros(2, 4), mask_ids=torch.zeros(3, dtype=torch.int32)), TypeError, "bool"),
    (dict(masks=torch.zeros(2, 3, dtype=torch.bool), mask_ids=torch.zeros(3, dtype=torch.int32)),
     ValueError, "n_masks, 4"),
    (dict(masks=torch.zeros(2, 4, dtype=torch.bool), mask_ids=torch.tensor([0, 5, 1])), ValueError, r"\[-1, 2\)"),
    (dict(backend="cuda"), ValueError, "backend"),
    (dict(activation="gelu"), ValueError, "activation must be one of 'silu', 'gelu_tanh'"),
    (dict(sums=torch.zeros(2, 4, dtype=torch.float64)), ValueError, "go together"),
    (dict(lang_ids=torch.zeros(3, dtype=torch.int32), sums=torch.zeros(2, 4).half()), TypeError, "float64 or float32"),
    (dict(lang_ids=torch.zeros(3, dtype=torch.int32), active_sums=torch.zeros(2, 4, dtype=torch.int64)),
     TypeError, "float64 or float32"),
    (dict(lang_ids=torch.zeros(3, dtype=torch.int32), sums=torch.zeros(2, 3, dtype=torch.float64)),
     ValueError, "n_langs, 4"),
    (dict(lang_ids=torch.zeros(3, dtype=torch.int32), counts=torch.zeros(2, 4, dtype=torch.int64),
          sums=torch.zeros(3, 4, dtype=torch.float64)), ValueError, "one row per language"),
    (dict(lang_ids=torch.tensor([0, 2, -1]), sums=torch.zeros(2, 4, dtype=torch.float64)), ValueError, r"\[-1, 2\)"),
    (dict(values=torch.zeros(2, 4)), ValueError, "pass masks and mask_ids with values"),
    (dict(masks=torch.zeros(2, 4, dtype=torch.bool), mask_ids=torch.zeros(3, dtype=torch.int32),
          values=torch.zeros(2, 4, dtype=torch.float64)), TypeError, "float32"),
    (dict(masks=torch.zeros(2, 4, dtype=torch.bool), mask_ids=torch.zeros(3, dtype=torch.int32),
          values=torch.zeros(3, 4)), ValueError, "one row per mask"),
    (dict(masks=torch.zeros(2, 4, dtype=torch.bool), mask_ids=torch.zeros(3, dtype=torch.int32),
          values=torch.zeros(2, 5)), ValueError, "n_masks, 4"),
]


@pytest.mark.parametrize("kwargs,error,message", BAD_INPUTS)
def test_bad_input_is_one_clear_error(kwargs, error, message):
    kwargs = {"gate": torch.ones(3, 4), "up": torch.ones(3, 4), **kwargs}
    with pytest.raises(error, match=message) as info:
        silu_mul(kwargs.pop("gate"), kwargs.pop("up"), **kwargs)
    assert "\n" not in str(info.value)


def test_bad_packed_width():
    with pytest.raises(ValueError, match=r"\[\.\.\., 2\*I\]"):
        silu_mul_packed(torch.ones(3, 5))


def test_unchecked_ids_are_ignored_by_the_kernel():
    """check_ids=False skips the host check; out-of-range ids neither count nor mask."""
    gate, up = torch.ones(3, 4), torch.ones(3, 4)
    memory = torch.zeros(16, 4, dtype=torch.int64)
    counts = memory[:2]  # the rows beyond must stay untouched
    out = silu_mul(gate, up, lang_ids=torch.tensor([0, 7, -1]), counts=counts,
                   masks=torch.ones(1, 4, dtype=torch.bool), mask_ids=torch.tensor([9, 0, -1]),
                   backend="triton", check_ids=False)
    assert memory.tolist() == [[1] * 4] + [[0] * 4] * 15
    assert torch.equal(out, torch.stack([F.silu(gate[0]), torch.zeros(4), F.silu(gate[2])]))


def test_triton_backend_without_triton(monkeypatch):
    import lna.kernels as kernels

    monkeypatch.setattr(kernels, "triton_available", lambda: False)
    with pytest.raises(RuntimeError, match="triton package is not installed"):
        silu_mul(torch.ones(2, 2), torch.ones(2, 2), backend="triton")
    assert torch.equal(silu_mul(torch.ones(2, 2), torch.ones(2, 2)), F.silu(torch.ones(2, 2)))


def test_triton_on_cpu_without_interpreter(monkeypatch):
    import lna.kernels.silu_mul_triton as module

    monkeypatch.setattr(module, "INTERPRET", False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        silu_mul(torch.ones(2, 2), torch.ones(2, 2), backend="triton")
