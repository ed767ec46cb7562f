"""lna: language-neuron activation profiler for gated-MLP LLMs (Llama, Mistral, Qwen, Gemma, ...)."""
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
version = {}
exec((ROOT / "lna" / "_version.py").read_text(), version)

setup(
    name="lna",
    version=version["__version__"],
    description="Fast, exact profiler of language neurons in gated-MLP LLMs (Llama, Mistral, Qwen, Gemma, ...)",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # The design card keeps kernels/ and configs/ at the top level; they ship as
    # lna.kernels and lna.configs so that no top-level `kernels` package shadows
    # the Hugging Face package of that name (transformers probes it).
    packages=find_packages(include=["lna", "lna.*"]) + ["lna.kernels", "lna.configs"],
    package_dir={"lna.kernels": "kernels", "lna.configs": "configs"},
    package_data={"lna": ["py.typed"], "lna.configs": ["*.yaml"]},  # py.typed: the API has type hints
    install_requires=[
        "torch>=2.11,<2.14",
        "transformers>=5.17,<5.25",
        "tokenizers>=0.21",
        "safetensors",
        "numpy>=1.26",
        "zarr>=3.0,<4",
        "click>=8.1",
        "pyyaml>=6",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        # Triton drives the CUDA kernels (and runs them on CPU under TRITON_INTERPRET=1
        # in the tests); without it lna falls back to the torch implementation.
        "triton>=3.4; platform_system == 'Linux'",
    ],
    extras_require={
        # py3langid: lna-steer's tests (4.6 MB, numpy only); hypothesis: the readers' fuzz tests
        "dev": ["pytest>=8", "pytest-benchmark>=4", "xarray>=2024.10", "py3langid>=0.4,<0.5", "hypothesis>=6.100"],
        # Reading stores as labelled arrays (README, Formats); zarr alone needs nothing more.
        "xarray": ["xarray>=2024.10"],
        # The backend reads vLLM's V1 model runner; 0.32 pins torch 2.13 (0.33 needs 2.14).
        "vllm": ["vllm>=0.32,<0.33"],
        # lna-align's DPO with LoRA (TRL's DPOTrainer/DPOConfig of the 1.x line, PEFT's LoRA);
        # datasets is what DPOTrainer takes. NLLB's tokenizer loads from its tokenizer.json.
        "align": ["trl>=1.0,<2", "peft>=0.18", "datasets>=4"],
        # lna launch: shards of a profile as Ray tasks over a cluster (tested with 2.60).
        "ray": ["ray>=2.40,<3"],
        # lna-steer's language identifier: py3langid ships its model in the wheel (4.6 MB, numpy only).
        "steer": ["py3langid>=0.4,<0.5"],
        # benches/bench_peers.py only: the tools a user would compare lna with (tested with
        # nnsight 0.8.1 and transformer-lens 4.3.0, whose TransformerBridge it uses).
        "peers": ["nnsight>=0.8,<0.9", "transformer-lens>=4.3,<5"],
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
            "lna-experts=lna.cli:experts_main",
        ]
    },
)
