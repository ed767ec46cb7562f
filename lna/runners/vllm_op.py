"""lna's counting activation as a torch custom op, so vLLM's compiled graphs keep it.

torch.compile (and CUDA graphs, which replay what was captured) freeze the Python of a
module's forward at trace time: branches on the call in progress, or tensors swapped in
per step, would be baked in. So the op reads everything that changes from step to step
through buffers that live as long as the engine, and mutates its results in place:
- `ids` int32 [capacity]: the slot (language) of each token of the step in flight, -1 for
  every other row (the worker writes the step's ids before the forward and -1 after it,
  so warm-up, dummy runs and CUDA-graph padding rows are never counted);
- `counts` int64 [slots, neurons of this rank]: this layer's counts, added to in place, and
  `sums`, `active_sums` float64, the same shape: its activation sums (where `with_sums`);
- `tally` int64 [1]: how many tokens this layer counted; the worker checks after each call
  that every layer counted exactly the tokens it planned, so a graph that bypassed or
  replayed the op wrongly is an error, never a wrong count.
The op is opaque to the compiler (its fake implementation only gives the output's shape),
so inside it lna's kernel runs as in eager mode: Triton on CUDA, torch on CPU.
"""
import torch

from lna.kernels import silu_mul_packed


@torch.library.custom_op("lna::act_and_mul_count", mutates_args=("counts", "sums", "active_sums", "tally"))
def act_and_mul_count(x: torch.Tensor, ids: torch.Tensor, counts: torch.Tensor, sums: torch.Tensor,
                      active_sums: torch.Tensor, tally: torch.Tensor, activation: str,
                      with_sums: bool) -> torch.Tensor:
    """act(gate) * up of the packed x [..., 2I]; counts[ids[t], j] += gate[t, j] > 0 for the
    tokens t of x with ids[t] >= 0 (ids covers the leading dims of x, flattened, from row 0),
    and where with_sums, sums and active_sums as lna.kernels.silu_mul adds them."""
    rows = x.shape[:-1].numel()
    if rows > ids.shape[0]:
        raise RuntimeError(f"lna: a forward of {rows} tokens exceeds the {ids.shape[0]} slots of the step buffer")
    lang = ids[:rows]
    tables = {"sums": sums, "active_sums": active_sums} if with_sums else {}
    out = silu_mul_packed(x.reshape(rows, x.shape[-1]), lang_ids=lang, counts=counts, check_ids=False, **tables,
                          **({} if activation == "silu" else {"activation": activation}))
    tally += (lang >= 0).sum()
    return out.reshape(*x.shape[:-1], out.shape[-1])


@act_and_mul_count.register_fake
def _(x, ids, counts, sums, active_sums, tally, activation, with_sums):
    return x.new_empty((*x.shape[:-1], x.shape[-1] // 2))
