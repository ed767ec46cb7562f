"""silu_mul(out=buffer): the same output, counts and sums as without it (the reference's, bit for
bit on the torch path), written into the buffer, which a second call reuses; a malformed
buffer fails with one line."""
import pytest
import torch
from kernel_cases import ACTIVATIONS, DTYPES, make_inputs, make_sum_table

from lna.kernels import silu_mul, silu_mul_native, silu_mul_packed


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("strided,masks", [(False, None), (True, "random"), (False, "set")])
def test_out_matches_the_reference_and_is_written(activation, dtype, strided, masks):
    gate, up, lang_ids, counts, mask_table, mask_ids, values = make_inputs(
        83, 130, dtype, strided=strided, langs="mixed", masks=masks, seed=3)
    gen = torch.Generator().manual_seed(4)
    sums, active = make_sum_table(3, 130, gen), make_sum_table(3, 130, gen)
    expected = silu_mul_native(gate, up, lang_ids, counts.clone(), mask_table, mask_ids, values=values,
                               activation=activation)
    kw = dict(lang_ids=lang_ids, masks=mask_table, mask_ids=mask_ids, values=values, activation=activation,
              backend="torch")
    tables = [counts.clone(), sums.clone(), active.clone()]
    plain = silu_mul(gate, up, counts=tables[0], sums=tables[1], active_sums=tables[2], **kw)
    out = torch.empty(83, 130, dtype=dtype)
    for _ in range(2):  # a reused buffer: the second call writes every element again
        out.fill_(float("nan"))
        into = [counts.clone(), sums.clone(), active.clone()]
        result = silu_mul(gate, up, counts=into[0], sums=into[1], active_sums=into[2], out=out, **kw)
        assert result.data_ptr() == out.data_ptr() and torch.equal(out, expected) and torch.equal(plain, expected)
        for a, b in zip(tables, into):  # the same counts and sums as without out, bit for bit
            assert torch.equal(a, b)


def test_out_on_the_packed_layout_and_a_3d_shape():
    gate, up, lang_ids, counts, *_ = make_inputs(40, 16, torch.float32, strided=True, langs="all", masks=None)
    ref = counts.clone()
    expected = silu_mul_native(gate, up, lang_ids, ref)
    gate_up = torch.cat([gate, up], dim=1).view(4, 10, 32)
    out = torch.empty(4, 10, 16)
    result = silu_mul_packed(gate_up, lang_ids=lang_ids.view(4, 10), counts=counts, out=out)
    assert result.shape == (4, 10, 16) and result.data_ptr() == out.data_ptr()
    assert torch.equal(out.view(40, 16), expected) and torch.equal(counts, ref)


@pytest.mark.parametrize("bad,error,words", [
    (lambda g: torch.empty(g.shape, dtype=torch.float64), TypeError, "out must be a torch.float32 tensor"),
    (lambda g: torch.empty(g.shape[0], g.shape[1] + 1), ValueError, "shaped like gate"),
    (lambda g: torch.empty(g.shape[1], g.shape[0]).t(), ValueError, "not contiguous"),
    (lambda g: g, ValueError, "must not share memory with gate"),
])
def test_a_malformed_out_fails_with_one_line(bad, error, words):
    gate, up = torch.randn(5, 7), torch.randn(5, 7)
    with pytest.raises(error, match=words) as info:
        silu_mul(gate, up, out=bad(gate))
    assert "\n" not in str(info.value)
