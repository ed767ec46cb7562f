"""How a command runs its model: one `RunnerOptions` every command's options extend, and one
`open_runner` that resolves the model once and opens runner, prompt template and identity.

A new runner knob is a field here, its use in `open_runner` (and `make_runner`), and its
click option in lna/cli/options.py; no command module changes.
"""
from dataclasses import dataclass

from lna import runners
from lna.core import config
from lna.models import loading


@dataclass(kw_only=True)
class RunnerOptions:
    """The knobs of lna-profile, -ablate, -steer, -eval and -align's model (their Options
    extend it, so `Options(model=..., device=...)` stays flat)."""

    model: str
    revision: str | None = None  # a hub model's branch, tag or commit (from the local cache)
    backend: str = "auto"  # auto | hf | vllm
    device: str | None = None  # cpu | cuda | cuda:N (default: cuda where torch sees a GPU)
    dtype: str | None = None  # default: bfloat16 on cuda, float32 on cpu
    template: str | None = None  # mathoctopus | plain | chat | a file (default: lna.core.config)
    token_budget: int | None = None  # tokens per forward batch (hf) or engine call (vllm)
    max_row_tokens: int = 2048
    vllm_compiled: bool = False  # vLLM without enforce_eager (torch.compile; CUDA graphs on a GPU)


@dataclass
class Opened:
    """A run's model: its runner, which backend and dtype it runs in, its prompt template."""

    runner: object
    backend: str
    dtype: str
    template_name: str
    template: config.Template
    info: loading.ModelInfo

    @property
    def identity(self) -> dict:
        """What a resumed run must match: the model's files, dtype and backend."""
        return {"model_fingerprint": self.runner.fingerprint, "dtype": self.dtype, "backend": self.backend}


def resolve(opts: RunnerOptions) -> loading.ModelInfo:
    """The model's folder and shape, from its config alone (before anything loads): pass it to
    `open_runner` so that the run resolves the model once."""
    return loading.resolve(opts.model, opts.revision, experts=None)  # dense or mixture-of-experts, as the config says


def open_runner(opts: RunnerOptions, info: loading.ModelInfo | None = None) -> Opened:
    """Load the model (resolved by `resolve(opts)` unless `info` is given) on the backend,
    device and dtype of `opts`; then its prompt template, which the tokenizer decides (chat
    where it has a chat template)."""
    info = info or resolve(opts)
    # runners.make_runner, looked up at each call: tests replace it
    runner, backend, dtype = runners.make_runner(
        opts.model, backend=opts.backend, device=opts.device, dtype=opts.dtype, token_budget=opts.token_budget,
        max_row_tokens=opts.max_row_tokens, revision=opts.revision, compiled=opts.vllm_compiled, info=info)
    name, template = config.template_for(opts.model, opts.template, runner.tokenizer)
    return Opened(runner, backend, dtype, name, template, info)

