"""What steering needs from silu_mul (issue 11): per-language sums of the activation (sums,
active_sums) and interventions that set neurons to values, on both backends (Triton under
TRITON_INTERPRET=1, and the torch path) and both activations.

Sums are checked with the sums rule of kernel_cases.py (twice plain torch's error against
float64, table-wide and per entry); counts stay exact; outputs as in test_silu_mul.py (the
torch path bit for bit against the reference, Triton within the dtype rule).
"""
import itertools

import pytest
import torch
from kernel_cases import (ACTIVATIONS, DTYPES, assert_dtype_rule, assert_sums_rule, make_inputs, make_sum_table,
                          make_values)

from lna.kernels import silu_mul, silu_mul_native
from lna.kernels.silu_mul_triton import LaunchConfig, silu_mul_triton

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")  # GELU's exp, as intended


def run_stats_case(backend, n_tokens, n_neurons, dtype, activation, *, seed, counts=True, sums=True, active=True,
                   masks="set", langs="mixed", strided=True, config=None, table_dtype=torch.float64):
    """One call with the requested tables and interventions, against the reference."""
    gate, up, lang_ids, count_table, mask_table, mask_ids, values = make_inputs(
        n_tokens, n_neurons, dtype, strided=strided, langs=langs, masks=masks, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    tables = {"counts": count_table if counts else None,
              "sums": make_sum_table(3, n_neurons, gen, table_dtype) if sums else None,
              "active_sums": make_sum_table(3, n_neurons, gen, table_dtype) if active else None}
    initial = {name: t.clone() for name, t in tables.items() if t is not None}
    expected_counts = count_table.clone()
    expected = silu_mul_native(gate, up, lang_ids, expected_counts, mask_table, mask_ids, values=values,
                               activation=activation)
    if backend == "triton":
        out = torch.full((n_tokens, n_neurons), float("nan"), dtype=dtype)
        silu_mul_triton(gate, up, lang_ids, tables["counts"], mask_table, mask_ids, sums=tables["sums"],
                        active_sums=tables["active_sums"], values=values, activation=activation, config=config,
                        out=out)
        assert_dtype_rule(out, gate, up, mask_table, mask_ids, activation, values)
    else:
        out = silu_mul(gate, up, lang_ids=lang_ids, masks=mask_table, mask_ids=mask_ids, values=values,
                       activation=activation, backend="torch", **tables)
        assert torch.equal(out, expected), "the torch path must replicate the reference bit for bit"
    if counts:
        assert torch.equal(tables["counts"], expected_counts)
    partials = -(-n_tokens // config.tokens_per_program) if config else 1  # token chunks (the default: one)
    if sums:
        assert_sums_rule(tables["sums"], initial["sums"], gate, lang_ids, activation, partials=partials)
    if active:
        assert_sums_rule(tables["active_sums"], initial["active_sums"], gate, lang_ids, activation, active=True,
                         partials=partials)
    return gate, up, lang_ids, tables


# Every cell counts, sums, sums over active tokens and sets neurons; the activation and the
# tables' dtype alternate so that each meets every shape and every dtype.
# The interpreter takes seconds per case above ~10**5 elements: there bf16 stands for all dtypes.
TABLE_DTYPES = (torch.float64, torch.float32)
STATS_GRID = [
    (backend, t, i, dtype, ACTIVATIONS[(s + d) % 2], TABLE_DTYPES[(s // 2 + d) % 2])
    for s, (t, i) in enumerate(itertools.product((1, 7, 83, 2048), (13, 96, 1000)))
    for d, dtype in enumerate(DTYPES)
    for backend in ("triton", "torch")
    if backend == "torch" or t * i < 10**5 or dtype == torch.bfloat16
] + [(backend, 83, 14336, dtype, ACTIVATIONS[d % 2], torch.float64)  # Mistral-7B's width
     for d, dtype in enumerate(DTYPES) for backend in ("triton", "torch")
     if backend == "torch" or dtype == torch.bfloat16]


@pytest.mark.parametrize("backend,n_tokens,n_neurons,dtype,activation,table_dtype", STATS_GRID)
def test_stats_and_set_grid(backend, n_tokens, n_neurons, dtype, activation, table_dtype):
    run_stats_case(backend, n_tokens, n_neurons, dtype, activation, seed=n_tokens * 31 + n_neurons,
                   strided=n_tokens % 2 == 1, table_dtype=table_dtype)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("counts,sums,active", [(False, True, False), (False, False, True), (True, True, False)])
def test_each_table_alone(backend, counts, sums, active):
    """lang_ids with sums only, active_sums only, or counts and sums: each table is right alone."""
    run_stats_case(backend, 83, 96, torch.bfloat16, "silu", seed=11, counts=counts, sums=sums, active=active,
                   masks=None)


@pytest.mark.parametrize("langs", ["all", "none"])
def test_stats_every_or_no_token_counted(langs):
    for backend in ("triton", "torch"):
        run_stats_case(backend, 40, 50, torch.float16, "gelu_tanh", seed=12, langs=langs)


@pytest.mark.parametrize("config", [
    LaunchConfig(16, 16, 16),  # many programs: several fp32 partials per entry, added by float64 atomics
    LaunchConfig(16, 128, 40),  # chunks that end inside a tile
])
def test_triton_stats_multi_program_configs(config):
    run_stats_case("triton", 90, 40, torch.bfloat16, "silu", seed=13, config=config)
    run_stats_case("triton", 90, 40, torch.float32, "gelu_tanh", seed=14, config=config)
    run_stats_case("triton", 90, 40, torch.float16, "silu", seed=15, config=config, table_dtype=torch.float32)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_sums_accumulate_over_calls(backend):
    """Three batches into one float64 table equal the float64 sums over all of them."""
    gen = torch.Generator().manual_seed(15)
    sums = make_sum_table(4, 70, gen)
    initial, batches = sums.clone(), []
    for n_tokens in (33, 1, 64):
        gate = (torch.randn(n_tokens, 70, generator=gen) * 3).bfloat16()
        lang_ids = torch.randint(-1, 4, (n_tokens,), generator=gen)
        silu_mul(gate, gate, lang_ids=lang_ids, sums=sums, backend=backend)
        batches.append((gate, lang_ids))
    gate, lang_ids = (torch.cat(parts) for parts in zip(*batches))
    assert_sums_rule(sums, initial, gate, lang_ids)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_uncounted_non_finite_tokens_stay_out_of_the_sums(backend, activation):
    """A prompt or padding token (id -1) whose activation is inf or NaN must not reach any
    language's sums (weighting it by 0 would give 0 * inf = NaN)."""
    gen = torch.Generator().manual_seed(16)
    gate = torch.randn(9, 20, generator=gen) * 3
    lang_ids = torch.tensor([0, 1, -1, 0, -1, 1, 0, -1, 1])
    gate[2], gate[4, :10], gate[4, 10:], gate[7] = float("inf"), float("-inf"), float("nan"), 1e38
    sums, active = torch.zeros(2, 20, dtype=torch.float64), torch.zeros(2, 20, dtype=torch.float64)
    counts = torch.zeros(2, 20, dtype=torch.int64)
    silu_mul(gate, gate, lang_ids=lang_ids, counts=counts, sums=sums, active_sums=active, activation=activation,
             backend=backend)
    assert torch.isfinite(sums).all() and torch.isfinite(active).all()
    assert_sums_rule(sums, torch.zeros_like(sums), gate, lang_ids, activation)
    assert_sums_rule(active, torch.zeros_like(active), gate, lang_ids, activation, active=True)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_sums_see_the_raw_activation(backend):
    """Interventions change the output, never the statistics: the same tables as without them."""
    gate, up, lang_ids, _, masks, mask_ids, values = make_inputs(50, 40, torch.bfloat16, strided=False,
                                                                 langs="mixed", masks="set", seed=17)
    masks[:] = True
    tables = [torch.zeros(3, 40, dtype=torch.float64) for _ in range(4)]
    silu_mul(gate, up, lang_ids=lang_ids, sums=tables[0], active_sums=tables[1], masks=masks, mask_ids=mask_ids,
             values=values, backend=backend)
    silu_mul(gate, up, lang_ids=lang_ids, sums=tables[2], active_sums=tables[3], backend=backend)
    assert torch.equal(tables[0], tables[2]) and torch.equal(tables[1], tables[3])


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_intervention_changes_nothing(backend, activation, dtype):
    """A mask row without True leaves its tokens bit for bit as without any intervention,
    whatever its values; tokens of the other rows are set."""
    gen = torch.Generator().manual_seed(18)
    gate, up = (torch.randn(2, 37, 96, generator=gen) * 3).to(dtype).unbind(0)
    masks = torch.rand(3, 96, generator=gen) < 0.5
    masks[1] = False
    values = make_values(3, 96, gen)
    mask_ids = torch.randint(-1, 3, (37,), generator=gen)
    plain = silu_mul(gate, up, activation=activation, backend=backend)
    out = silu_mul(gate, up, masks=masks, mask_ids=mask_ids, values=values, activation=activation, backend=backend)
    untouched = (mask_ids == 1) | (mask_ids == -1)
    assert torch.equal(out[untouched], plain[untouched])
    everyone_empty = silu_mul(gate, up, masks=masks, mask_ids=torch.ones_like(mask_ids), values=values,
                              activation=activation, backend=backend)
    assert torch.equal(everyone_empty, plain)
    assert not torch.equal(out, plain)  # the other rows did intervene


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_several_interventions_in_one_batch(backend, dtype):
    """Per-token ids pick one of several interventions (set to a mean, set to a multiple,
    zero, none) in one call: each token's output is the one of a call on the same batch with
    its intervention alone (bit for bit), and the batch matches the reference."""
    gen = torch.Generator().manual_seed(19)
    n_tokens, width = 24, 50
    gate, up = (torch.randn(2, n_tokens, width, generator=gen) * 3).to(dtype).unbind(0)
    means = torch.rand(width, generator=gen) * 2
    masks = torch.rand(4, width, generator=gen) < 0.4
    values = torch.stack([means, 3 * means, torch.zeros(width), means])
    mask_ids = torch.arange(n_tokens) % 5 - 1  # -1, 0, 1, 2, 3, -1, ...
    out = silu_mul(gate, up, masks=masks, mask_ids=mask_ids, values=values, backend=backend)
    for m in range(-1, 4):
        mine = mask_ids == m
        alone = (silu_mul(gate, up, backend=backend) if m < 0 else
                 silu_mul(gate, up, masks=masks[m:m + 1], mask_ids=torch.where(mine, 0, -1), values=values[m:m + 1],
                          backend=backend))
        assert torch.equal(out[mine], alone[mine]), f"tokens of intervention {m} differ from a call with it alone"
    zeroed = silu_mul(gate, up, masks=masks[2:3], mask_ids=torch.zeros(n_tokens, dtype=torch.long), backend=backend)
    assert torch.equal(out[mask_ids == 2], zeroed[mask_ids == 2]), "values of 0 must equal zeroing (values=None)"
    if backend == "torch":
        assert torch.equal(out, silu_mul_native(gate, up, masks=masks, mask_ids=mask_ids, values=values))
    else:
        assert_dtype_rule(out, gate, up, masks, mask_ids, "silu", values)


def test_triton_ignores_out_of_range_ids_in_sums():
    """check_ids=False: ids beyond the tables neither count nor sum, and stay out of memory."""
    gate, up = torch.ones(3, 4), torch.ones(3, 4)
    memory = torch.zeros(16, 4, dtype=torch.float64)
    silu_mul(gate, up, lang_ids=torch.tensor([0, 7, -1]), sums=memory[:2], backend="triton", check_ids=False)
    silu = float(torch.nn.functional.silu(torch.tensor(1.0)))
    assert memory[0].tolist() == [silu] * 4 and not memory[1:].any()
