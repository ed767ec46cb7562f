"""`lna-steer --model M --neurons N.json --store S --from X --to Y -o DIR`: switch the output
language through the language neurons, and measure it."""
import click

from lna.cli.options import POSITIVE, model_option, runner_options


def _strengths(ctx, param, value):
    try:
        out = tuple(float(x) for x in value.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: give comma-separated numbers such as 1,2,4") from None
    if not out or any(x < 0 or x != x for x in out):
        raise click.BadParameter(f"{value!r}: give non-negative numbers such as 1,2,4")
    return out


@click.command("steer")
@model_option()
@click.option("--neurons", required=True, type=click.Path(), help="Neuron-set JSON from lna-identify.")
@click.option("--store", required=True, type=click.Path(),
              help="Count store with activation sums (lna-profile --sums, the default): the target's mean activations.")
@click.option("--from", "source", required=True, help="Language of the prompts, whose neurons are switched off.")
@click.option("--to", "target", required=True, help="Language to steer to, whose neurons are set.")
@click.option("-o", "--out", required=True, type=click.Path(),
              help="Output folder (an unfinished run there is resumed).")
@click.option("--strengths", default="1,2,4", show_default=True, callback=_strengths,
              help="Multiples of the target's mean activation to set its neurons to, one setting each "
                   "(besides the baseline and 'off': source neurons zeroed only).")
@click.option("--layers", default="all", show_default=True,
              help="Layer groups steered, each its own series: all, or e.g. 0-7,24-31 (two groups); "
                   "'+' joins ranges into one group (0-3+28-31).")
@click.option("--setting", type=click.Choice(["specific+related", "specific"]), default="specific+related",
              show_default=True, help="Which neurons of each language: every one listed, or the language-specific "
                                      "ones only.")
@click.option("--value", type=click.Choice(["mean", "active-mean"]), default="mean", show_default=True,
              help="mean: sums / tokens, the mean activation on the target's tokens; active-mean: "
                   "active_sums / counts, its mean where it fired.")
@click.option("--dataset", default="mgsm", show_default=True,
              help="The questions in --from: mgsm, msvamp, demo, a folder like MGSM/MSVAMP, or a JSONL.")
@click.option("--prompts", default=None, type=click.Path(),
              help="Instead of --dataset: a text file of questions in --from, one a line.")
@click.option("--responses", default=None, type=click.Path(),
              help="Reference responses in --from and --to for the perplexities (default: the responses file "
                   "beside the store, else the dataset's).")
@click.option("--max-new-tokens", type=POSITIVE, default=64, show_default=True,
              help="Longest answer, in tokens (greedy decoding).")
@click.option("--allow-other-model", is_flag=True, help="Steer with neuron sets or a store of another model.")
@runner_options
def steer(quiet, **kwargs):
    """Answer prompts in --from with the --from neurons zeroed and the --to neurons set to a
    multiple of their mean activation in --to, at several strengths (and per layer group),
    beside the unsteered baseline; measure the share of outputs in --to (language identifier
    and script) and the perplexity cost.

    Writes DIR/steer.json, steer.csv, steer.md, steer.png (share in --to against strength),
    outputs.jsonl (every answer) and nll.npz (lets a rerun resume). Needs the 'steer' extra
    (pip install 'lna[steer]': the language identifier).
    """
    from lna.interventions.steer_report import markdown
    from lna.interventions.steering import Options, run

    result = run(Options(progress=not quiet, **kwargs))
    click.echo(markdown(result), nl=False)
