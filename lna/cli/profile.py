"""`lna-profile`: count activations of response tokens per language into a store."""
import click

POSITIVE = click.IntRange(min=1)


def _device(ctx, param, value):
    from lna.core.errors import LnaError
    from lna.models.loading import DEVICES, parse_device

    try:
        return parse_device(value)
    except LnaError:
        raise click.BadParameter(f"{value!r} is not a device lna runs on; use {DEVICES}") from None


def _shard(ctx, param, value):
    from lna.core.errors import LnaError
    from lna.profiling.shards import parse

    if value is None:
        return None
    try:
        return str(parse(value))
    except LnaError as err:
        raise click.BadParameter(str(err).removeprefix("--shard ")) from None


def runner_options(f):
    """How the model runs, shared by lna-profile and lna-ablate."""
    options = [
        click.option("--backend", type=click.Choice(["auto", "hf", "vllm"]), default="auto", show_default=True,
                     help="hf: transformers; vllm: vLLM (pip install 'lna[vllm]'); auto: vllm where it is "
                          "installed and a GPU is present, else hf."),
        click.option("--device", default=None, callback=_device,
                     help="cpu, cuda or cuda:N (default: cuda where torch sees a GPU, else cpu)."),
        click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default=None,
                     help="Weights and activations (default: bfloat16 on cuda, float32 on cpu)."),
        click.option("--template", default=None,
                     help="mathoctopus, plain, chat (the tokenizer's chat template) or a FILE with {query} "
                          "(default: the model's preset in configs/models.yaml, else chat where the tokenizer "
                          "has one, else mathoctopus)."),
        click.option("--revision", default=None,
                     help="Branch, tag or commit of a Hugging Face model (from the local cache)."),
        click.option("--limit", type=POSITIVE, default=None, help="Only the first N questions of each language."),
        click.option("--token-budget", type=POSITIVE, default=None,
                     help="Tokens per forward batch (hf: default 16384 on cuda, 2048 on cpu) or per engine "
                          "call (vllm: default 16384); progress and checkpoints move a batch at a time."),
        click.option("--checkpoint-every", type=click.FloatRange(min=0), default=60.0, show_default=True,
                     help="Seconds between checkpoints, checked after every batch (0: every batch). "
                          "Ctrl-C and SIGTERM checkpoint too; the same command resumes."),
        click.option("--quiet", "-q", is_flag=True, help="No progress output."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@click.command("profile")
@click.option("--model", required=True, help="Hugging Face id (from the local cache), local folder, or lna:tiny-llama.")
@click.option("--langs", default="all", show_default=True, help="'all' (every language of the data), 'study' (the study's ten) or codes: en,zh,...")
@click.option("--dataset", default="mgsm", show_default=True, help="mgsm, msvamp, demo, a folder like MGSM/MSVAMP, or a JSONL.")
@click.option("--out", "-o", default=None, help="Count store to write (default: <model>.<dataset>.zarr); an existing one is resumed.")
@click.option("--responses", default=None, help="Responses JSONL (default: beside the store; sampled if missing).")
@click.option("--samples", "-n", type=POSITIVE, default=10, show_default=True,
              help="Responses sampled per question (where the data has none).")
@click.option("--temperature", type=click.FloatRange(min=0), default=0.7, show_default=True,
              help="Sampling temperature (0: greedy).")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=0.95, show_default=True,
              help="Nucleus sampling: sample among the most likely tokens holding this much probability.")
@click.option("--max-new-tokens", type=POSITIVE, default=512, show_default=True,
              help="Longest sampled response, in tokens.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the sampling (each batch of questions is seeded from it, so reruns agree).")
@click.option("--shard", default=None, metavar="K/N", callback=_shard,
              help="Count only shard K of N (K from 1 to N) of the questions, split by prompt whatever the data's "
                   "order; `lna merge` of the N shard stores equals one run over all (default --out: "
                   "<model>.<dataset>.shard-K-of-N.zarr). `lna launch` runs all N on a Ray cluster.")
@click.option("--sums/--no-sums", default=True, show_default=True,
              help="Also store each neuron's summed activation per language (its mean activation, which "
                   "lna-steer sets neurons to); a store that has them keeps them.")
@click.option("--force-decode", is_flag=True,
              help="Where responses are sampled, count them afterwards by force-decoding (two passes) "
                   "instead of while sampling them (the default: one pass).")
@click.option("--vllm-compiled", is_flag=True,
              help="vLLM backend: run vLLM's torch.compile (and CUDA graphs on a GPU) with lna's counting op "
                   "instead of eager mode (counting only; see README, backends).")
@runner_options
def profile(quiet, **kwargs):
    """Count the activations of response tokens per language into a count store: responses
    the data lacks are sampled and counted while they are sampled (one pass); given ones,
    and with --force-decode all, are force-decoded through the counting MLPs."""
    from lna.profiling.profile import Options, run

    run(Options(progress=not quiet, **kwargs))
