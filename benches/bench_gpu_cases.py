"""Kernel correctness on the device: the real Triton kernels, through lna.kernels' public API
(backend="triton"), against the plain reference silu_mul_native and a float64 computation.

CASES is one table: each entry is a combination of the kernel contract's options (docs/design.md,
"Kernels"): counting, masks, vLLM's packed [T, 2I] layout, and the extensions (the
GELU-tanh activation, activation sums, set-value interventions). An entry whose options the
installed kernels do not take (read off the signatures of silu_mul and silu_mul_native) is
reported as unsupported and not run, so the check grows with the kernels: a new variant is
one line here. Entries marked speed=True are also timed by bench_gpu_silu_mul.py.

Rules (the project's standards):
- counts: equal to the reference's, exactly (tables start from random values: `+=` is checked);
- output: finite (on CUDA the output block is poisoned with NaN just before the call, so an
  unwritten element fails) and within tolerance's output rule: exactly 0 where
  the float64 result is 0, |out - ref64| at most twice plain torch's (silu_mul_native in the
  same dtype, on the device), for the largest error and for every element relative to its size;
- sums and active sums (float64 tables, as lna's runners pass them): tolerance's
  sums rule, twice plain torch's fp32 per-token summation, largest error and every entry;
- tokens without a mask (-1) or with an all-False mask row: bit for bit the unmasked output.
"""
import inspect
import sys
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import torch

N_LANGS, N_MASKS = 10, 4
DTYPES = (torch.bfloat16, torch.float16, torch.float32)  # most used first: a cut run keeps bf16
# (I, token counts): every dtype runs the first of each list first, bf16 runs all first
SHAPES = {"cuda": ((14336, (2048, 8192, 83, 7, 1)), (13, (83, 1, 7, 2048, 8192))),
          "dry": ((40, (83,)), (13, (1,)))}


@dataclass(frozen=True)
class Case:
    name: str
    count: bool = False
    mask: bool = False
    packed: bool = False  # silu_mul_packed(gate_up) instead of silu_mul(gate, up) on separate tensors
    sums: bool = False  # sums and active_sums tables
    values: bool = False  # set-value intervention (needs mask)
    activation: str = "silu"
    counts_dtype: str = "int64"
    speed: bool = False  # also timed by the speed stage

    def needs(self) -> set:
        """Keyword arguments beyond the original silu_mul contract."""
        out = {"activation"} if self.activation != "silu" else set()
        if self.sums:
            out |= {"sums", "active_sums"}
        if self.values:
            out.add("values")
        return out

    @property
    def unmasked(self) -> "Case":
        return replace(self, mask=False, values=False, count=False, sums=False)


CASES = (
    Case("plain", speed=True),
    Case("count", count=True, speed=True),
    Case("count int32", count=True, counts_dtype="int32"),
    Case("packed plain", packed=True, speed=True),
    Case("packed count", packed=True, count=True, speed=True),
    Case("packed mask", packed=True, mask=True, speed=True),
    Case("packed count+mask", packed=True, count=True, mask=True, speed=True),
    # contract extensions, run where the installed kernels take them
    Case("gelu_tanh packed plain", packed=True, activation="gelu_tanh", speed=True),
    Case("gelu_tanh packed count", packed=True, count=True, activation="gelu_tanh", speed=True),
    Case("packed sums", packed=True, sums=True),
    Case("packed count+sums", packed=True, count=True, sums=True, speed=True),
    Case("packed values", packed=True, mask=True, values=True, speed=True),
    Case("gelu_tanh packed everything", packed=True, count=True, sums=True, mask=True, values=True,
         activation="gelu_tanh"),
)


def missing(case: Case, kernels) -> list:
    """Options of `case` that silu_mul or silu_mul_native of the installed kernels lack."""
    lacking = set()
    for fn in (kernels.silu_mul, kernels.silu_mul_native):
        params = inspect.signature(fn).parameters
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            lacking |= case.needs() - set(params)
    return sorted(lacking)


@dataclass
class Inputs:
    gate: torch.Tensor
    up: torch.Tensor
    gate_up: torch.Tensor  # packed [T, 2I] (gate, up are its halves when packed)
    lang_ids: torch.Tensor
    counts: torch.Tensor  # start values
    masks: torch.Tensor  # row 0 all False
    mask_ids: torch.Tensor
    values: torch.Tensor
    sums: torch.Tensor
    active_sums: torch.Tensor


def make_inputs(case: Case, n_tokens: int, n_neurons: int, dtype, device, seed: int = 0) -> Inputs:
    """Fresh random inputs; gate holds exact zeros of both signs (0 does not fire)."""
    gen = torch.Generator(device=device).manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, device=device, generator=gen)

    gate_up = (torch.randn(n_tokens, 2 * n_neurons, device=device, generator=gen) * 3).to(dtype)
    gate, up = gate_up[:, :n_neurons], gate_up[:, n_neurons:]
    zeros = rand(n_tokens, n_neurons) < 0.05
    gate.masked_fill_(zeros, 0.0)
    gate.masked_fill_(zeros & (rand(n_tokens, n_neurons) < 0.5), -0.0)
    if not case.packed:
        gate, up = gate.contiguous(), up.contiguous()
    masks = rand(N_MASKS, n_neurons) < 0.3
    masks[0] = False
    return Inputs(
        gate, up, gate_up,
        lang_ids=torch.randint(-1, N_LANGS, (n_tokens,), device=device, generator=gen, dtype=torch.int32),
        counts=torch.randint(0, 1000, (N_LANGS, n_neurons), device=device, generator=gen,
                             dtype=getattr(torch, case.counts_dtype)),
        masks=masks,
        mask_ids=torch.randint(-1, N_MASKS, (n_tokens,), device=device, generator=gen, dtype=torch.int32),
        values=torch.randn(N_MASKS, n_neurons, device=device, generator=gen) * 2,
        sums=torch.randn(N_LANGS, n_neurons, device=device, generator=gen, dtype=torch.float64),
        active_sums=torch.randn(N_LANGS, n_neurons, device=device, generator=gen, dtype=torch.float64),
    )


def kwargs(case: Case, inp: Inputs, fresh=torch.clone) -> dict:
    """silu_mul's keyword arguments for `case`; tables updated in place go through `fresh`."""
    kw = {}
    if case.activation != "silu":
        kw["activation"] = case.activation
    if case.count or case.sums:
        kw["lang_ids"] = inp.lang_ids
    if case.count:
        kw["counts"] = fresh(inp.counts)
    if case.sums:
        kw["sums"], kw["active_sums"] = fresh(inp.sums), fresh(inp.active_sums)
    if case.mask:
        kw["masks"], kw["mask_ids"] = inp.masks, inp.mask_ids
    if case.values:
        kw["values"] = inp.values
    return kw


def call(kernels, case: Case, inp: Inputs, kw: dict, backend="triton", check_ids=True):
    if case.packed:
        return kernels.silu_mul_packed(inp.gate_up, backend=backend, check_ids=check_ids, **kw)
    return kernels.silu_mul(inp.gate, inp.up, backend=backend, check_ids=check_ids, **kw)


def poisoned_call(kernels, case, inp, kw):
    """The kernel's output, in a block the caching allocator just held NaNs in (CUDA)."""
    if inp.gate.is_cuda:
        poison = torch.full(inp.gate.shape, float("nan"), dtype=inp.gate.dtype, device=inp.gate.device)
        del poison
    return call(kernels, case, inp, kw)


def check_case(kernels, case: Case, n_tokens: int, n_neurons: int, dtype, device, seed: int) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the error rules live beside the tests
    import tolerance

    inp = make_inputs(case, n_tokens, n_neurons, dtype, device, seed)
    kw, kw_ref = kwargs(case, inp), kwargs(case, inp)
    out = poisoned_call(kernels, case, inp, kw)
    torch_out = kernels.silu_mul_native(inp.gate, inp.up, **kw_ref)
    masks = (inp.masks, inp.mask_ids) if case.mask else (None, None)
    report = {"output": tolerance.check_output(out, inp.gate, inp.up, *masks, case.activation,
                                               inp.values if case.values else None, plain=torch_out)}
    checks = [report["output"]["ok"]]
    if case.count:
        report["counts_exact"] = bool(torch.equal(kw["counts"], kw_ref["counts"]))
        checks.append(report["counts_exact"])
    if case.sums:
        partials = -(-n_tokens // launch_tokens(kernels, n_tokens, n_neurons, device))  # fp32 partials per entry
        for name in ("sums", "active_sums"):
            report[name] = tolerance.check_sums(kw[name], getattr(inp, name), inp.gate, inp.lang_ids, case.activation,
                                                active=name == "active_sums", partials=partials)
            checks.append(report[name]["ok"])
    if case.mask:  # tokens that no intervention touches: bit for bit the unmasked kernel's output
        plain = call(kernels, case.unmasked, inp, kwargs(case.unmasked, inp))
        untouched = (inp.mask_ids < 0) | (inp.mask_ids == 0)
        report["untouched_rows_bit_equal"] = bool(torch.equal(out[untouched], plain[untouched]))
        checks.append(report["untouched_rows_bit_equal"])
    report["ok"] = all(checks)
    return report


def launch_tokens(kernels, n_tokens, n_neurons, device) -> int:
    """Tokens per program of the kernel's default launch (each adds its own fp32 partial)."""
    try:
        from lna.kernels.silu_mul_triton import default_config
    except ImportError:
        return max(n_tokens, 1)
    return max(default_config(n_tokens, n_neurons, torch.device(device)).tokens_per_program, 1)


def check_all(ctx, kernels, seconds) -> dict:
    """Every supported case at every shape and dtype, for at most `seconds`: bf16 at every shape,
    then the other dtypes at the first shape of each list, then the rest. Saved after each row
    (a run cut short keeps what it measured); rows left when the time is up count as not run."""
    until = time.time() + seconds
    cases = {c.name: {"supported": not missing(c, kernels), "missing": missing(c, kernels)} for c in CASES}
    run = [c for c in CASES if cases[c.name]["supported"]]
    plan = [(dtype, n_neurons, n_tokens, case) for dtype in DTYPES
            for n_neurons, tokens in SHAPES["dry" if ctx.dry else "cuda"] for n_tokens in tokens for case in run]
    first = {(n_neurons, tokens[0]) for n_neurons, tokens in SHAPES["dry" if ctx.dry else "cuda"]}
    plan.sort(key=lambda p: 0 if p[0] == DTYPES[0] else 1 if (p[1], p[2]) in first else 2)
    report = {"rules": __doc__.split("Rules (the project's standards):")[1].strip(), "cases": cases,
              "rows": [], "planned": len(plan), "seconds_allowed": round(seconds)} | tally([], len(plan))
    for seed, (dtype, n_neurons, n_tokens, case) in enumerate(plan):
        if time.time() > until or ctx.left() < ctx.reserve:
            break
        row = {"case": case.name, "dtype": str(dtype).removeprefix("torch."), "tokens": n_tokens,
               "neurons": n_neurons}
        started = time.time()
        try:
            row |= check_case(kernels, case, n_tokens, n_neurons, dtype, ctx.device, seed)
        except Exception as error:
            traceback.print_exc()
            row |= {"ok": False, "error": f"{type(error).__name__}: {str(error)[:300]}"}
        row["seconds"] = round(time.time() - started, 3)
        report["rows"].append(row)
        report |= tally(report["rows"], len(plan))
        ctx.save("correctness", report, quiet=True)
        if not row["ok"]:
            print(f"correctness FAILED: {row}", flush=True)
    return report


def tally(rows, planned) -> dict:
    failed = [f"{r['case']} {r['dtype']} T={r['tokens']} I={r['neurons']}" for r in rows if not r["ok"]]
    return {"passed": len(rows) - len(failed), "failed": len(failed), "failures": failed[:20],
            "not_run": planned - len(rows), "all_passed": not failed and len(rows) == planned}
