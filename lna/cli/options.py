"""The click options the commands share, each declared once: how the model runs (lna-profile,
-ablate, -steer, -eval, -align and lna launch), how responses are sampled, and how neurons
are identified (lna-identify, -report, -compare).

A group is a decorator; where a command's help or default of an option differs, the group
takes it as a keyword, so the option's name, type and range checks stay one.
"""
import click

POSITIVE = click.IntRange(min=1)
DTYPES = ("float32", "bfloat16", "float16")
MODEL_HELP = "Hugging Face id (from the local cache), local folder, or lna:tiny-llama."


def _apply(f, options: list):
    for option in reversed(options):
        f = option(f)
    return f


def _device(ctx, param, value):
    from lna.core.errors import LnaError
    from lna.models.loading import DEVICES, parse_device

    try:
        return parse_device(value)
    except LnaError:
        raise click.BadParameter(f"{value!r} is not a device lna runs on; use {DEVICES}") from None


# -- the model -------------------------------------------------------------------------------------
def model_option(required: bool = True, help: str = MODEL_HELP):
    return click.option("--model", required=required, default=None, help=help)


def neurons_option():
    """--neurons of the commands that apply neuron sets (lna-ablate, lna-steer)."""
    return click.option("--neurons", required=True, type=click.Path(),
                        help="Neuron-set JSON from lna-identify; for a mixture-of-experts model, the folder (or its "
                             "expert_neurons.json) that `lna experts` wrote.")


def resumed_out_option():
    """-o of the commands that resume an unfinished run in their output folder."""
    return click.option("-o", "--out", required=True, type=click.Path(),
                        help="Output folder (an unfinished run there is resumed).")


def runner_options(f=None, *, backend: str | None = None, device: str | None = None, dtype: str | None = None,
                   template: str | None = None, token_budget: str | None = None, checkpoints: bool = True):
    """The fields of lna.runners.options.RunnerOptions (but --model) with --limit, --quiet and,
    where a command checkpoints, --checkpoint-every. Keywords replace an option's help."""
    if f is None:
        return lambda g: runner_options(g, backend=backend, device=device, dtype=dtype, template=template,
                                        token_budget=token_budget, checkpoints=checkpoints)
    options = [
        click.option("--backend", type=click.Choice(["auto", "hf", "vllm"]), default="auto", show_default=True,
                     help=backend or "hf: transformers; vllm: vLLM (pip install 'lna[vllm]'); auto: vllm where it "
                                     "is installed and a GPU is present, else hf."),
        click.option("--device", default=None, callback=_device,
                     help=device or "cpu, cuda or cuda:N (default: cuda where torch sees a GPU, else cpu)."),
        click.option("--dtype", type=click.Choice(DTYPES), default=None,
                     help=dtype or "Weights and activations (default: bfloat16 on cuda, float32 on cpu)."),
        click.option("--template", default=None,
                     help=template or "mathoctopus, plain, chat (the tokenizer's chat template) or a FILE with "
                                      "{query} (default: the model's preset in configs/models.yaml, else chat where "
                                      "the tokenizer has one, else mathoctopus)."),
        click.option("--revision", default=None,
                     help="Branch, tag or commit of a Hugging Face model (from the local cache)."),
        click.option("--limit", type=POSITIVE, default=None, help="Only the first N questions of each language."),
        click.option("--token-budget", type=POSITIVE, default=None,
                     help=token_budget or "Tokens per forward batch (hf: default 16384 on cuda, 2048 on cpu) or per "
                                          "engine call (vllm: default 16384); progress and checkpoints move a batch "
                                          "at a time."),
        *([click.option("--checkpoint-every", type=click.FloatRange(min=0), default=60.0, show_default=True,
                        help="Seconds between checkpoints, checked after every batch (0: every batch). "
                             "Ctrl-C and SIGTERM checkpoint too; the same command resumes.")] if checkpoints else []),
        click.option("--quiet", "-q", is_flag=True, help="No progress output."),
    ]
    return _apply(f, options)


# -- sampling --------------------------------------------------------------------------------------
SAMPLING_HELP = {
    "samples": "Responses sampled per question.",
    "temperature": "Sampling temperature (0: greedy).",
    "top_p": "Nucleus sampling: sample among the most likely tokens holding this much probability.",
    "max_new_tokens": "Longest sampled response, in tokens.",
    "seed": "Seed of the sampling (each batch of questions is seeded from it, so reruns agree).",
}


def sampling_options(*, samples: int, temperature: float, top_p: float, max_new_tokens: int, **help):
    """--samples/-n, --temperature, --top-p, --max-new-tokens and --seed with a command's
    defaults; NAME_help replaces an option's help (samples_help=...)."""
    h = {**SAMPLING_HELP, **{k.removesuffix("_help"): v for k, v in help.items()}}
    assert set(h) == set(SAMPLING_HELP), f"unknown help keywords: {sorted(set(h) - set(SAMPLING_HELP))}"
    return lambda f: _apply(f, [
        click.option("--samples", "-n", type=POSITIVE, default=samples, show_default=True, help=h["samples"]),
        click.option("--temperature", type=click.FloatRange(min=0), default=temperature, show_default=True,
                     help=h["temperature"]),
        click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=top_p, show_default=True,
                     help=h["top_p"]),
        click.option("--max-new-tokens", type=POSITIVE, default=max_new_tokens, show_default=True,
                     help=h["max_new_tokens"]),
        click.option("--seed", type=int, default=0, show_default=True, help=h["seed"]),
    ])


# -- identification --------------------------------------------------------------------------------
def identify_options(f):
    """The identification knobs, shared by lna-identify, lna-report and lna-compare."""
    return _apply(f, [
        click.option("--method", type=click.Choice(["ternary", "lape"]), default="ternary", show_default=True,
                     help="ternary: the study's entropy - lambda x max; lape: Tang et al."),
        click.option("--top-rate", type=click.FloatRange(0, 1, min_open=True), default=0.01, show_default=True,
                     help="Fraction of all neurons selected (lowest scores)."),
        click.option("--tau-quantile", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.95,
                     show_default=True, help="tau is this quantile of all activation probabilities."),
        click.option("--lambda", "lam", default="auto", show_default=True,
                     help="Weight of the max-probability term, or auto (largest in [0, 0.2] "
                          "with no selected neuron shared by all languages)."),
        click.option("--langs", default=None, help="Identify over these languages only (e.g. en,zh,ja; default: all "
                                                   "of the store)."),
        click.option("--allow-partial", is_flag=True, help="Accept a store from an unfinished profile."),
    ])


def parse_identify_options(method, top_rate, tau_quantile, lam, langs) -> dict:
    """Click values -> keyword arguments of lna.identification.identify.identify_store."""
    from lna.core.errors import LnaError

    if lam != "auto":
        try:
            lam = float(lam)
        except ValueError:
            raise LnaError(f"--lambda must be a number or auto, got {lam!r}") from None
        if not 0 <= lam < float("inf"):  # a negative weight rewards low maxima: empty sets
            raise LnaError(f"--lambda must be auto or a number >= 0, got {lam:g}")
        if method == "lape":
            raise LnaError("--lambda applies to the ternary method only; drop it for --method lape")
    return {"method": method, "top_rate": top_rate, "tau_quantile": tau_quantile, "lam": lam,
            "langs": langs}
