"""lna: language-neuron activation profiler for gated-MLP LLMs (Llama, Mistral, Qwen, Gemma, ...)."""
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
# The build puts this folder on sys.path, where the top-level kernels/ would shadow Hugging
# Face's `kernels` (a dependency of transformers >= 5.25), whose setuptools hook
# (egg_info.writers: kernels._internals) then fails to import: `pip install --no-build-isolation .`
# (as benches/gpu_check.sh installs) failed beside transformers 5.25. Nothing here imports from
# this folder; lna/_version.py is read as a file.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT]
version = {}
exec((ROOT / "lna" / "_version.py").read_text(), version)

setup(
    name="lna",
    version=version["__version__"],
    description="Fast, exact profiler of language neurons in gated-MLP LLMs (Llama, Mistral, Qwen, Gemma, ...)",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",  # LICENSE; the data lna reads (MGSM, MSVAMP, the study's release) keeps its own
    license_files=["LICENSE"],
    classifiers=[
        "Programming Language :: Python :: 3",
        "Operating System :: POSIX :: Linux",
        "Intended Audience :: Science/Research",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
    python_requires=">=3.10",
    # The design card keeps kernels/ and configs/ at the top level; they ship as
    # lna.kernels and lna.configs so that no top-level `kernels` package shadows
    # the Hugging Face package of that name (transformers probes it).
    packages=find_packages(include=["lna", "lna.*"]) + ["lna.kernels", "lna.configs"],
    package_dir={"lna.kernels": "kernels", "lna.configs": "configs"},
    package_data={"lna": ["py.typed"], "lna.configs": ["*.yaml"]},  # py.typed: the API has type hints
    install_requires=[
        # Capped: the suite has run on torch 2.13 only - the newest CPU wheel this project's
        # CI machine gets (its index offers 2.14 as a CUDA build only) - and the vllm extra
        # (vLLM 0.32) requires torch 2.13 exactly. Lift with the vllm pin.
        "torch>=2.11,<2.14",
        # <5.25: transformers 5.25 depends on Hugging Face's `kernels` and imports from it while
        # loading a tokenizer; wherever this checkout's root is on sys.path (python -c or a
        # notebook started there, as tests/faults/test_fault_interrupts.py's SIGTERM tests do)
        # the top-level kernels/ shadows it and every model load fails ("cannot import name
        # 'CUDAProperties' from 'kernels'"). CI tests the newest below the cap (.ci/run).
        "transformers>=5.17,<5.25",
        "tokenizers>=0.21",
        "safetensors",
        "numpy>=1.26",
        "zarr>=3.0",
        "click>=8.1",
        "pyyaml>=6",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        # Triton drives the CUDA kernels (and runs them on CPU under TRITON_INTERPRET=1
        # in the tests); without it lna falls back to the torch implementation.
        "triton>=3.4; platform_system == 'Linux'",
    ],
    # Upper bounds only where a known break is named beside them (torch, transformers, vllm);
    # elsewhere CI takes the newest pip gives.
    extras_require={
        # py3langid: lna-steer's tests (4.6 MB, numpy only); hypothesis: the readers' fuzz tests
        "dev": ["pytest>=8", "pytest-benchmark>=4", "xarray>=2024.10", "py3langid>=0.4", "hypothesis>=6.100"],
        # Reading stores as labelled arrays (docs/formats.md); zarr alone needs nothing more.
        "xarray": ["xarray>=2024.10"],
        # The backend reads vLLM's V1 model runner; 0.32 pins torch 2.13 (0.33 needs 2.14).
        "vllm": ["vllm>=0.32,<0.33"],
        # lna-align's DPO with LoRA (TRL's DPOTrainer/DPOConfig of the 1.x line, PEFT's LoRA);
        # datasets is what DPOTrainer takes. NLLB's tokenizer loads from its tokenizer.json.
        "align": ["trl>=1.0", "peft>=0.18", "datasets>=4"],
        # lna launch: shards of a profile as Ray tasks over a cluster (tested with 2.60).
        "ray": ["ray>=2.40"],
        # lna-steer's language identifier: py3langid ships its model in the wheel (4.6 MB, numpy only).
        "steer": ["py3langid>=0.4"],
        # benches/bench_peers.py only: the tools a user would compare lna with (tested with
        # nnsight 0.8.1 and transformer-lens 4.3.0, whose TransformerBridge it uses).
        "peers": ["nnsight>=0.8", "transformer-lens>=4.3"],
    },
    entry_points={
        "console_scripts": [
            "lna=lna.cli:main",
            "lna-profile=lna.cli:profile_main",
            "lna-identify=lna.cli:identify_main",
            "lna-ablate=lna.cli:ablate_main",
            "lna-report=lna.cli:report_main",
            "lna-compare=lna.cli:compare_main",
            "lna-eval=lna.cli:eval_main",
            "lna-align=lna.cli:align_main",
            "lna-launch=lna.cli:launch_main",
            "lna-steer=lna.cli:steer_main",
            "lna-merge=lna.cli:merge_main",
            "lna-import-counts=lna.cli:import_counts_main",
            "lna-experts=lna.cli:experts_main",
        ]
    },
)
