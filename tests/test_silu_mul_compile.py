"""The CUDA code path of the kernels compiles, without a GPU: Triton's compiler and the ptxas
it ships build each kernel variant for Hopper (sm_90) and Ampere (sm_80) in a subprocess
without TRITON_INTERPRET. This covers what the interpreter never runs: libdevice's exp and
IEEE division (fp32), the native bf16 casts, tensor-core dots on 16-bit operands, the
fp32 "ieee" dots of the activation sums, float64 atomics. Each build must use no local
memory (register spills would cost bandwidth).

The launches are specialised as at run time for vLLM's packed layout at Mistral-7B's width
(unit strides along neurons, 16-aligned pointers and sizes).
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
NVIDIA_BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


def compile_all(arch):
    """{variant: {"local": bytes of local memory, "registers": n}} for every kernel variant."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    import lna.kernels.gemm_silu_mul as gemm
    import lna.kernels.silu_mul_triton as fused

    def build(kernel, types, constants, num_warps, num_stages):
        signature = {name: types.get(name, "i32") for name in kernel.arg_names}
        signature.update({name: "constexpr" for name in constants})
        aligned = [i for i, name in enumerate(kernel.arg_names)
                   if signature[name].startswith("*") or name.startswith(("n_neurons", "stride", "tokens", "hidden"))]
        source = ASTSource(kernel, signature, constants, {(i,): [["tt.divisibility", 16]] for i in aligned})
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": num_warps, "num_stages": num_stages})
        return usage(compiled.asm["cubin"])

    report = {}
    # (name, COUNT, SUMS and ACTIVE_SUMS, MASK, SET, GELU, NONFINITE): the defaults, each new feature,
    # and all at once.
    fused_variants = (("plain", False, False, False, False, False, False),
                      ("count", True, False, False, False, False, False),
                      ("count+mask", True, False, True, False, False, False),
                      ("count+sums", True, True, False, False, False, False),
                      ("count+nonfinite", True, False, False, False, False, True),
                      ("count+sums+nonfinite", True, True, False, False, False, True),
                      ("mask+set", False, False, True, True, False, False),
                      ("gelu+all", True, True, True, True, True, True))
    for dtype, counts, sums, precise in (("bf16", "i64", "fp64", False), ("fp16", "i32", "fp32", False),
                                         ("fp32", "i64", "fp64", True)):
        for name, count, summed, mask, set_values, gelu, nonfinite in fused_variants:
            types = {"gate_ptr": f"*{dtype}", "up_ptr": f"*{dtype}", "out_ptr": f"*{dtype}", "lang_ptr": "*i32",
                     "counts_ptr": f"*{counts}", "mask_id_ptr": "*i32", "masks_ptr": "*u8", "sums_ptr": f"*{sums}",
                     "active_ptr": f"*{sums}", "values_ptr": "*fp32", "nonfinite_ptr": "*i32"}
            cfg = fused.LaunchConfig(32, 128, 832)  # the default at T = 8192 on 132 SMs
            constants = {"stride_gi": 1, "stride_ui": 1, "stride_ci": 1, "stride_si": 1, "stride_ai": 1,
                         "COUNT": count, "SUMS": summed, "ACTIVE_SUMS": summed, "MASK": mask, "SET": set_values,
                         "GELU": gelu, "LANGS_PAD": 16, "BLOCK_T": cfg.block_t, "BLOCK_I": cfg.block_i,
                         "PRECISE": precise, "INTERPRET": False, "NONFINITE": nonfinite}
            warps = 8 if summed else cfg.num_warps  # as default_config(sums=True) picks
            report[f"silu_mul {dtype} {name}"] = build(fused._silu_mul_kernel, types, constants, warps, cfg.num_stages)
        types = {"x_ptr": f"*{dtype}", "wg_ptr": f"*{dtype}", "wu_ptr": f"*{dtype}", "out_ptr": f"*{dtype}",
                 "lang_ptr": "*i32", "counts_ptr": f"*{counts}", "mask_id_ptr": "*i32", "masks_ptr": "*u8",
                 "values_ptr": "*fp32"}
        block_m, block_n, block_k, group_m, num_warps, num_stages = 128, 128, 64, 8, 8, 3  # the GPU default
        if dtype == "fp32":
            block_k, num_stages = 32, 2  # fp32 tiles take twice the shared memory
        for name, set_values, gelu in (("count+mask", False, False), ("gelu+count+set", True, True)):
            constants = {"stride_xk": 1, "stride_wgk": 1, "stride_wuk": 1, "stride_ci": 1, "COUNT": True,
                         "MASK": True, "SET": set_values, "GELU": gelu, "LANGS_PAD": 16, "BLOCK_M": block_m,
                         "BLOCK_N": block_n, "BLOCK_K": block_k, "GROUP_M": group_m,
                         "DOT_PRECISION": "ieee" if dtype == "fp32" else None, "PRECISE": precise,
                         "INTERPRET": False}
            report[f"gemm_silu_mul {dtype} {name}"] = build(
                gemm._gemm_silu_mul_kernel, types, constants, num_warps, num_stages)
    return report


def usage(cubin):
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"lna-kernel-{os.getpid()}.cubin"
    path.write_bytes(cubin)
    try:
        text = subprocess.run([str(NVIDIA_BIN / "cuobjdump"), "--dump-resource-usage", str(path)],
                              capture_output=True, text=True, check=True).stdout
    finally:
        path.unlink()
    return {"registers": int(re.search(r"REG:(\d+)", text)[1]), "local": int(re.search(r"LOCAL:(\d+)", text)[1])}


@pytest.mark.parametrize("arch", [90, 80])
def test_cuda_path_compiles_without_spills(arch):
    if not (NVIDIA_BIN / "ptxas").is_file() or not (NVIDIA_BIN / "cuobjdump").is_file():
        pytest.skip(f"this triton ships no NVIDIA tools in {NVIDIA_BIN}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silence triton 3.9's notice; the default it keeps
    run = subprocess.run([sys.executable, __file__, str(arch)], capture_output=True, text=True, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.splitlines()[-1])
    assert len(report) == 30
    spilled = {name: r for name, r in report.items() if r["local"]}
    assert not spilled, f"register spills: {spilled}"
    print(json.dumps(report, indent=1))  # registers per variant, for the record (pytest -s)


if __name__ == "__main__":
    print(json.dumps(compile_all(int(sys.argv[1]))))
