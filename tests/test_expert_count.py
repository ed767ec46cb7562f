"""expert_silu_mul (Triton under TRITON_INTERPRET=1, and the torch path) and routed_counts
against the row-by-row references: exact counts per expert, language and neuron, outputs
bit-equal (torch) or within the dtype rule (Triton), odd and realistic shapes, empty
experts, strided halves of a packed gate_up, uncounted rows."""
import pytest
import torch
from kernel_cases import ACTIVATIONS, DTYPES, assert_dtype_rule

from lna.kernels.expert_count import expert_offsets, expert_silu_mul, routed_counts
from lna.kernels.expert_count_triton import expert_silu_mul_triton
from lna.kernels.reference import expert_silu_mul_native

pytestmark = [pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")]


def make_case(n_tokens, top_k, n_experts, width, dtype, *, n_langs=3, seed=0, strided=True):
    """Pairs of n_tokens tokens routed to top_k distinct experts each, sorted by expert as
    the runner sorts them; expert 0 is never chosen (an empty segment)."""
    gen = torch.Generator().manual_seed(seed)
    choice = torch.stack([torch.randperm(n_experts - 1, generator=gen)[:top_k] + 1 for _ in range(n_tokens)])
    order, bounds = expert_offsets(choice.reshape(-1), n_experts)
    S = order.numel()
    if strided:
        packed = (torch.randn(S, 2 * width, generator=gen) * 3).to(dtype)
        gate, up = packed[:, :width], packed[:, width:]
    else:
        gate = (torch.randn(S, width, generator=gen) * 3).to(dtype)
        up = (torch.randn(S, width, generator=gen) * 3).to(dtype)
    gate.masked_fill_(torch.rand(S, width, generator=gen) < 0.05, 0.0)  # 0 never fires
    lang_tok = torch.randint(-1, n_langs, (n_tokens,), generator=gen, dtype=torch.int32)
    lang_ids = lang_tok[order // top_k]
    counts = torch.randint(0, 1000, (n_experts, n_langs, width), generator=gen)  # += is checked
    return gate, up, bounds, lang_ids, counts, choice.reshape(-1)[order], lang_tok, order


CASES = [(1, 1, 2, 1), (7, 2, 5, 13), (83, 2, 8, 128), (64, 4, 16, 1000), (300, 8, 64, 96)]


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("n_tokens,top_k,n_experts,width", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_against_reference(backend, activation, n_tokens, top_k, n_experts, width, dtype):
    gate, up, bounds, lang_ids, counts, *_ = make_case(n_tokens, top_k, n_experts, width, dtype,
                                                       seed=n_tokens + width, strided=width % 2 == 0)
    want_counts = counts.clone()
    want = expert_silu_mul_native(gate, up, bounds, lang_ids, want_counts, activation=activation)
    got = expert_silu_mul(gate, up, bounds, lang_ids=lang_ids, counts=counts, activation=activation,
                          backend=backend)
    assert torch.equal(counts, want_counts)
    if backend == "torch":
        assert torch.equal(got, want)
    else:
        assert_dtype_rule(got, gate, up, None, None, activation, None)


@pytest.mark.parametrize("rows_per_program", [16, 48, 1000])
def test_triton_chunks_within_segments(rows_per_program):
    """Several programs per expert segment (atomics from many chunks), and chunks that end
    inside a tile."""
    gate, up, bounds, lang_ids, counts, *_ = make_case(120, 3, 6, 200, torch.float32, seed=5)
    want_counts = counts.clone()
    expert_silu_mul_native(gate, up, bounds, lang_ids, want_counts)
    expert_silu_mul_triton(gate, up, bounds, lang_ids, counts, block_t=16, block_i=64,
                           rows_per_program=rows_per_program)
    assert torch.equal(counts, want_counts)


def test_without_counting_is_the_product():
    gate, up, bounds, *_ = make_case(20, 2, 4, 33, torch.bfloat16)
    for backend in ("torch", "triton"):
        got = expert_silu_mul(gate, up, bounds, backend=backend)
        assert torch.equal(got, torch.nn.functional.silu(gate) * up)


def test_routed_counts_against_loops():
    gate, up, bounds, lang_ids, counts, experts, lang_tok, order = make_case(97, 3, 9, 8, torch.float32, seed=3)
    start = torch.randint(0, 50, (9, 3))
    routed, want = start.clone(), start.clone()
    for e, lang in zip(experts.tolist(), lang_ids.tolist()):
        if lang >= 0:
            want[e, lang] += 1
    routed_counts(experts, lang_ids, routed)
    assert torch.equal(routed, want)
    # each counted token is routed to exactly top_k = 3 experts
    for lang in range(3):
        assert int((routed - start)[:, lang].sum()) == 3 * int((lang_tok == lang).sum())


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("setting", ["zero", "set", "whole expert"])
def test_interventions_against_reference(backend, dtype, setting):
    """Masks per (mask, expert, neuron) chosen per row, zeroed or set, counting the raw gate
    meanwhile; a whole expert masked gives zero rows."""
    gate, up, bounds, lang_ids, counts, *_ = make_case(90, 3, 7, 130, dtype, seed=11)
    gen = torch.Generator().manual_seed(1)
    masks = torch.rand(4, 7, 130, generator=gen) < 0.3
    if setting == "whole expert":
        masks[1, 4] = True
    mask_ids = torch.randint(-1, 4, (gate.shape[0],), generator=gen, dtype=torch.int32)
    values = torch.randn(4, 7, 130, generator=gen) * 3 if setting == "set" else None
    want_counts = counts.clone()
    want = expert_silu_mul_native(gate, up, bounds, lang_ids, want_counts, masks, mask_ids, values=values)
    got = expert_silu_mul(gate, up, bounds, lang_ids=lang_ids, counts=counts, masks=masks, mask_ids=mask_ids,
                          values=values, backend=backend)
    assert torch.equal(counts, want_counts)
    if backend == "torch" or dtype == torch.float32 and setting != "set":
        assert torch.equal(got, want) if backend == "torch" else torch.allclose(got, want, rtol=1e-6, atol=1e-6)
    else:
        assert torch.allclose(got.float(), want.float(), rtol=2e-2, atol=2e-2)
    if setting == "whole expert":
        rows = torch.arange(bounds[4], bounds[5])
        assert (got[rows[mask_ids[rows] == 1]] == 0).all()
    assert not torch.equal(got, expert_silu_mul(gate, up, bounds))  # the masks did something


def test_offsets_sort_stably():
    ids = torch.tensor([2, 0, 2, 1, 0, 2])
    order, bounds = expert_offsets(ids, 4)
    assert order.tolist() == [1, 4, 3, 0, 2, 5]
    assert bounds == [0, 2, 3, 6, 6]


@pytest.mark.parametrize("bad,match", [
    (dict(offsets=[0, 3]), "offsets must run"),
    (dict(offsets=[1, 20]), "offsets must run"),
    (dict(counts=torch.zeros(3, 2, 8, dtype=torch.int64)), r"counts must be \[2, n_langs, 5\]"),
    (dict(counts=torch.zeros(2, 2, 5)), "int32 or int64"),
    (dict(lang_ids=None), "go together"),
    (dict(lang_ids=torch.zeros(3, dtype=torch.int32)), "one entry per row"),
])
def test_malformed_inputs_one_line(bad, match):
    args = dict(gate=torch.zeros(20, 5), up=torch.zeros(20, 5), offsets=[0, 12, 20],
                lang_ids=torch.zeros(20, dtype=torch.int32), counts=torch.zeros(2, 2, 5, dtype=torch.int64))
    args.update(bad)
    with pytest.raises((ValueError, TypeError), match=match) as err:
        expert_silu_mul(args.pop("gate"), args.pop("up"), args.pop("offsets"), **args)
    assert "\n" not in str(err.value)
