"""`lna-ablate --model M --neurons NEURONS.json -o DIR`: PPL with each language's neurons off."""
import click

from lna.cli.options import model_option, neurons_option, resumed_out_option, runner_options


@click.command("ablate")
@model_option()
@neurons_option()
@click.option("--responses", default=None, type=click.Path(),
              help="Responses JSONL written by lna-profile (default: the one beside the neurons' store).")
@click.option("--dataset", default=None, help="Instead of --responses: a dataset that carries responses (JSONL).")
@click.option("--langs", default="all", show_default=True,
              help="Target (and deactivated) languages: 'all' of the data, or codes en,zh,...")
@click.option("--setting", "settings", multiple=True, default=("specific", "specific+related"),
              show_default=True,
              help="specific, specific+related, or a neuron-set JSON file (named by its stem); repeatable. "
                   "Mixture-of-experts models also: experts (each language's experts off whole, from "
                   "language_experts.json beside the sets), or a file of `lna experts`.")
@resumed_out_option()
@click.option("--allow-other-model", is_flag=True, help="Ablate neuron sets identified on another model.")
@runner_options
def ablate(quiet, **kwargs):
    """Deactivate each language's neurons (SiLU(gate) := 0) and write the perplexity matrix
    PPL[baseline + deactivated language, target language] and its change against the
    baseline, for both settings of the paper (specific; specific + related) in one run.

    On a mixture-of-experts model the sets are those of `lna experts` (expert neurons, and
    whole language experts with --setting experts; docs/moe.md).

    Writes DIR/ppl.json, ppl-SETTING.csv, change-SETTING.csv, change-SETTING.png (Figure 2
    of the paper) and nll.npz (per-sample NLLs; lets a rerun resume).
    """
    from lna.interventions.ablate import Options, run

    run(Options(progress=not quiet, **kwargs))
