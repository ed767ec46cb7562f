"""`lna-profile`: count activations of response tokens per language into a store."""
import click

from lna.cli.options import POSITIVE, model_option, runner_options, sampling_options


def _shard(ctx, param, value):
    from lna.core.errors import LnaError
    from lna.profiling.shards import parse

    if value is None:
        return None
    try:
        return str(parse(value))
    except LnaError as err:
        raise click.BadParameter(str(err).removeprefix("--shard ")) from None


@click.command("profile")
@model_option()
@click.option("--langs", default="all", show_default=True, help="'all' (every language of the data), 'study' (the study's ten) or codes: en,zh,...")
@click.option("--dataset", default="mgsm", show_default=True, help="mgsm, msvamp, demo, a folder like MGSM/MSVAMP, or a JSONL.")
@click.option("--out", "-o", default=None, help="Count store to write (default: <model>.<dataset>.zarr); an existing one is resumed.")
@click.option("--responses", default=None, help="Responses JSONL (default: beside the store; sampled if missing).")
@sampling_options(samples=10, temperature=0.7, top_p=0.95, max_new_tokens=512,
                  samples_help="Responses sampled per question (where the data has none).")
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
