"""The torch path's counting over runs of one language (lna's packed rows: a prompt, then its
responses, all of one language) against the naive reference: exact counts and the sums rule,
at odd and realistic shapes (7, 83, 2048 tokens; up to Llama-2-13B's 13,824 neurons) in every
dtype, with the run path actually taken (not the one-hot fallback), blocks split inside runs,
and the float32 accumulator emptied before it could lose exactness.
"""
import pytest
import torch
from kernel_cases import DTYPES, assert_sums_rule, make_sum_table, random_gates

import lna.kernels.silu_mul_torch as module
from lna.kernels import silu_mul, silu_mul_native


def packed_ids(n_tokens, n_langs, gen, prompt=(3, 40), response=(5, 90)):
    """Language ids laid out as lna's packed rows: -1 for a prompt, then 1-3 responses of the
    row's language; rows until n_tokens (the last one cut)."""
    ids = []
    while len(ids) < n_tokens:
        lang = int(torch.randint(0, n_langs, (1,), generator=gen))
        ids += [-1] * int(torch.randint(*prompt, (1,), generator=gen))
        for _ in range(int(torch.randint(1, 4, (1,), generator=gen))):
            ids += [lang] * int(torch.randint(*response, (1,), generator=gen))
    return torch.tensor(ids[:n_tokens], dtype=torch.int32)


def inputs(n_tokens, n_neurons, dtype, seed, n_langs=3):
    gen = torch.Generator().manual_seed(seed)
    gate = (torch.randn(n_tokens, n_neurons, generator=gen) * 3).to(dtype)
    up = torch.randn(n_tokens, n_neurons, generator=gen).to(dtype)
    zeros = torch.rand(n_tokens, n_neurons, generator=gen) < 0.05  # exact zeros of both signs do not fire
    gate.masked_fill_(zeros, 0.0)
    gate.masked_fill_(zeros & (torch.rand(n_tokens, n_neurons, generator=gen) < 0.5), -0.0)
    return gate, up, packed_ids(n_tokens, n_langs, gen), gen


def spy_runs(monkeypatch):
    """Record whether each call took the run path."""
    taken = []
    real = module._runs

    def runs(lang_ids):
        out = real(lang_ids)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(module, "_runs", runs)
    return taken


# Every dtype at the odd and the SmolLM shapes; 13,824 neurons once (bf16), as 2048 x 13824
# in every dtype would add ~10 s.
SHAPES = [(t, i, dtype) for t, i in [(7, 13), (83, 128), (2048, 1536)] for dtype in DTYPES]
SHAPES.append((2048, 13824, torch.bfloat16))


@pytest.mark.parametrize("n_tokens,n_neurons,dtype", SHAPES)
def test_runs_match_the_reference(monkeypatch, n_tokens, n_neurons, dtype):
    gate, up, lang_ids, gen = inputs(n_tokens, n_neurons, dtype, seed=n_tokens + n_neurons)
    counts = torch.randint(0, 1000, (3, n_neurons), generator=gen)
    sums, active = make_sum_table(3, n_neurons, gen), make_sum_table(3, n_neurons, gen)
    want_counts, want_sums, want_active = counts.clone(), sums.clone(), active.clone()
    start_sums, start_active = sums.clone(), active.clone()
    expected = silu_mul_native(gate, up, lang_ids, want_counts, sums=want_sums, active_sums=want_active)
    taken = spy_runs(monkeypatch)
    out = silu_mul(gate, up, lang_ids=lang_ids, counts=counts, sums=sums, active_sums=active, backend="torch")
    assert taken == [n_tokens >= 16]  # 7 tokens: too short for runs, the one-hot path
    assert torch.equal(out, expected)
    assert torch.equal(counts, want_counts)
    assert_sums_rule(sums, start_sums, gate, lang_ids)
    assert_sums_rule(active, start_active, gate, lang_ids, active=True)


def test_runs_split_into_blocks_and_flush_exactly(monkeypatch):
    """Blocks of 8 rows inside long runs, prompt runs skipped, and the float32 accumulator
    emptied into the integer table before 20 rows: the counts stay exact."""
    monkeypatch.setattr(module, "RUN_BLOCK_ELEMENTS", 8 * 30)
    monkeypatch.setattr(module, "EXACT_LIMIT", 20)
    gate, up, lang_ids, gen = inputs(700, 30, torch.float32, seed=5)
    counts = torch.randint(0, 9, (3, 30), generator=gen, dtype=torch.int32)
    expected = counts.clone()
    taken = spy_runs(monkeypatch)
    out = silu_mul(gate, up, lang_ids=lang_ids, counts=counts, backend="torch")
    assert taken == [True]
    assert torch.equal(out, silu_mul_native(gate, up, lang_ids, expected))
    assert torch.equal(counts, expected)


def test_interleaved_ids_take_the_one_hot_path(monkeypatch):
    gate, up, lang_ids, _ = random_gates(500, 16, 3, seed=1)
    counts = torch.zeros(3, 16, dtype=torch.int64)
    expected = counts.clone()
    taken = spy_runs(monkeypatch)
    silu_mul(gate, up, lang_ids=lang_ids, counts=counts, backend="torch")
    silu_mul_native(gate, up, lang_ids, expected)
    assert taken == [False] and torch.equal(counts, expected)


def test_only_prompt_tokens_count_nothing():
    gate, up = torch.randn(2, 64, 8).unbind(0)
    counts = torch.ones(2, 8, dtype=torch.int64)
    sums = torch.zeros(2, 8, dtype=torch.float64)
    silu_mul(gate, up, lang_ids=torch.full((64,), -1), counts=counts, sums=sums, backend="torch")
    assert torch.equal(counts, torch.ones(2, 8, dtype=torch.int64)) and not sums.any()


def test_a_non_finite_activation_spoils_only_its_language():
    """Runs sum each language on its own: an overflowed token makes its own language's sums
    non-finite, as the reference does, and the counts stay exact."""
    gate = torch.randn(64, 4)
    gate[40, 1] = float("inf")
    up = torch.ones(64, 4)
    lang_ids = torch.tensor([-1] * 8 + [0] * 24 + [-1] * 8 + [1] * 24, dtype=torch.int32)
    sums, counts = torch.zeros(2, 4, dtype=torch.float64), torch.zeros(2, 4, dtype=torch.int64)
    want_sums, want_counts = sums.clone(), counts.clone()
    silu_mul(gate, up, lang_ids=lang_ids, counts=counts, sums=sums, backend="torch")
    silu_mul_native(gate, up, lang_ids, want_counts, sums=want_sums)
    assert torch.equal(counts, want_counts)
    assert torch.isfinite(sums[0]).all() and torch.isinf(sums[1, 1])
    assert torch.allclose(sums[0], want_sums[0])


@pytest.mark.parametrize("tables", ["counts", "counts+sums", "active"])
@pytest.mark.parametrize("where,flagged", [("response", True), ("prompt", False), ("none", False)])
def test_the_run_path_flags_a_non_finite_counted_gate(monkeypatch, tables, where, flagged):
    """nonfinite on the run path as on the one-hot path: set by a NaN or inf gate of a counted
    token, never by one in a prompt (uncounted)."""
    gate = torch.randn(96, 8)
    lang_ids = torch.tensor([-1] * 16 + [0] * 32 + [-1] * 16 + [1] * 32, dtype=torch.int32)
    if where == "response":
        gate[70, 3] = float("nan")
        gate[20, 5] = float("inf")
    elif where == "prompt":
        gate[4, 3] = float("nan")
        gate[50, 1] = float("-inf")
    kw = {"counts": torch.zeros(2, 8, dtype=torch.int64)} if tables.startswith("counts") else {}
    if tables in ("counts+sums", "active"):
        kw["active_sums"] = torch.zeros(2, 8, dtype=torch.float64)
    if tables == "counts+sums":
        kw["sums"] = torch.zeros(2, 8, dtype=torch.float64)
    flag = torch.zeros(1, dtype=torch.int32)
    taken = spy_runs(monkeypatch)
    silu_mul(gate, torch.ones(96, 8), lang_ids=lang_ids, nonfinite=flag, backend="torch", **kw)
    assert taken == [True] and bool(flag) == flagged


@pytest.mark.parametrize("sign", ["+", "-", "both"])
def test_the_run_path_never_flags_large_finite_gates(monkeypatch, sign):
    """Counting alone reads the flag off a float64 total of the counted gates: the largest
    finite fp32 values of either sign, summed over many tokens, stay finite there (an fp32
    total would overflow); an inf among them still flags."""
    big = torch.finfo(torch.float32).max
    gate = torch.full((96, 8), big) * {"+": 1, "-": -1, "both": 1}[sign]
    if sign == "both":
        gate[::2] *= -1
    lang_ids = torch.tensor([-1] * 16 + [0] * 80, dtype=torch.int32)
    taken = spy_runs(monkeypatch)
    for poison, flagged in ((None, False), ((40, 2), True)):
        if poison:
            gate[poison] = float("inf") if sign != "-" else float("-inf")
        flag = torch.zeros(1, dtype=torch.int32)
        silu_mul(gate, torch.ones(96, 8), lang_ids=lang_ids, counts=torch.zeros(1, 8, dtype=torch.int64),
                 nonfinite=flag, backend="torch")
        assert bool(flag) == flagged
    assert taken == [True, True]
