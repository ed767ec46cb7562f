"""silu_mul's nonfinite flag (lna-profile stops on NaN/Inf gates, naming the layer): against a
plain torch reference (isfinite over the gates of counted tokens), on both backends (Triton in
the CPU interpreter), with and without activation sums (read off the sums where they are
taken), and the counts and output unchanged by asking for the flag."""
import pytest
import torch

from lna.kernels import silu_mul

BACKENDS = ["torch", "triton"]


def reference(gate, ids):
    counted = ids >= 0
    return bool((~torch.isfinite(gate[counted])).any())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sums", [False, True])
@pytest.mark.parametrize("bad", [None, ("nan", 3), ("inf", 5), ("-inf", 5), ("nan", 1), ("inf", 6)])
def test_flag_equals_reference(backend, sums, bad):
    gen = torch.Generator().manual_seed(0)
    gate, up = torch.randn(9, 300, generator=gen), torch.randn(9, 300, generator=gen)
    ids = torch.tensor([0, -1, 1, 0, 1, 0, -1, 1, 0], dtype=torch.int32)  # rows 1 and 6: not counted
    if bad is not None:
        gate[bad[1], 17] = float(bad[0])
    tables = lambda: dict(counts=torch.zeros(2, 300, dtype=torch.int64),  # noqa: E731
                          **({"sums": torch.zeros(2, 300, dtype=torch.float64),
                              "active_sums": torch.zeros(2, 300, dtype=torch.float64)} if sums else {}))
    with_flag, without = tables(), tables()
    flag = torch.zeros(1, dtype=torch.int32)
    out = silu_mul(gate, up, lang_ids=ids, nonfinite=flag, backend=backend, **with_flag)
    plain = silu_mul(gate, up, lang_ids=ids, backend=backend, **without)
    assert bool(flag.item()) == reference(gate, ids)
    assert torch.equal(out.nan_to_num(), plain.nan_to_num()) and torch.equal(with_flag["counts"], without["counts"])


def test_flag_needs_counting():
    gate = torch.randn(2, 4)
    with pytest.raises(ValueError, match="lang_ids"):
        silu_mul(gate, gate, nonfinite=torch.zeros(1, dtype=torch.int32))
    with pytest.raises(TypeError, match="int32 tensor"):
        silu_mul(gate, gate, lang_ids=torch.zeros(2, dtype=torch.int32), counts=torch.zeros(1, 4, dtype=torch.int64),
                 nonfinite=torch.zeros(2, dtype=torch.int64))
