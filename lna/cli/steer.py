"""`lna-steer --model M --neurons N.json --store S --from X --to Y -o DIR`: switch the output
language through the language neurons, and measure it."""
import click

from lna.cli.options import POSITIVE, model_option, neurons_option, resumed_out_option, runner_options


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
@neurons_option()
@click.option("--store", required=True, type=click.Path(),
              help="Count store with activation sums (lna-profile --sums, the default): the target's mean activations.")
@click.option("--from", "source", required=True, help="Language of the prompts, whose neurons are switched off.")
@click.option("--to", "target", required=True, help="Language to steer to, whose neurons are set.")
@resumed_out_option()
@click.option("--strengths", default="1,2,4", show_default=True, callback=_strengths,
              help="Multiples of the target's mean activation to set its neurons to, one setting each "
                   "(besides the baseline and 'off': source neurons zeroed only).")
@click.option("--layers", default="all", show_default=True,
              help="Layer groups steered, each its own series: all, or e.g. 0-7,24-31 (two groups); "
                   "'+' joins ranges into one group (0-3+28-31); dense: the fewest layers holding half of "
                   "both languages' neurons.")
@click.option("--methods", default="mean", show_default=True,
              help="Interventions compared on the same prompts, comma-separated: mean (set --to's neurons to "
                   "strength x their mean activation) and quantile (to strength x a high quantile of their "
                   "activation in --to, per neuron; needs the transformers backend and --to references) and "
                   "diffmean (add strength x (mean in --to - mean in --from) to both languages' neurons; "
                   "transformers backend).")
@click.option("--quantile", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.9,
              show_default=True, help="The quantile method's quantile.")
@click.option("--search", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Also find, per method and layer group, the smallest strength at which this share of outputs "
                   "is fluent in --to (a geometric ladder 0.25-64, then bisection).")
@click.option("--max-ppl", type=click.FloatRange(min=0, min_open=True), default=None,
              help="An output is fluent only if the unsteered model's perplexity of it is at most this "
                   "(default: 4 x its perplexity of the --to reference responses).")
@click.option("--allow-template-mismatch", is_flag=True,
              help="Steer although the prompts and the reference responses come from different prompt templates.")
@click.option("--setting", type=click.Choice(["specific+related", "specific"]), default="specific+related",
              show_default=True, help="Which neurons of each language: every one listed, or the language-specific "
                                      "ones only.")
@click.option("--value", type=click.Choice(["mean", "active-mean", "constant"]), default="mean", show_default=True,
              help="mean: sums / tokens, the mean activation on the target's tokens; active-mean: "
                   "active_sums / counts, its mean where it fired; constant (mixture-of-experts models, whose "
                   "stores keep no sums): each strength is the value set.")
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
    multiple of a per-neuron level in --to, at several strengths (per method and layer group),
    beside the unsteered baseline. Each output is judged for its language, degeneracy and
    perplexity under the unsteered model; the headline is the share fluent in --to (all
    three pass), beside the perplexity cost (docs/steering.md).

    Writes DIR/steer.json, steer.csv, steer.md, steer.png (share fluent in --to against
    strength), outputs.jsonl (every answer: ids, text, judgements) and nll.npz (lets a rerun
    resume). Needs the 'steer' extra (pip install 'lna[steer]': the language identifier).
    """
    from lna.interventions.expert_ablate import is_expert_sets
    from lna.interventions.steer import experts
    from lna.interventions.steer.run import Options, run
    from lna.interventions.steer.table import markdown

    # the sets of `lna experts`: a mixture-of-experts model, steered through its expert neurons
    steer_run = experts.run if is_expert_sets(kwargs["neurons"]) else run
    result = steer_run(Options(progress=not quiet, **kwargs))
    click.echo(markdown(result), nl=False)
