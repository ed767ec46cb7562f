"""`lna-ablate --model M --neurons NEURONS.json -o DIR`: PPL with each language's neurons off."""
import click


@click.command("ablate")
@click.option("--model", required=True, help="Hugging Face id (from the local cache), local folder, or lna:tiny-llama.")
@click.option("--neurons", required=True, type=click.Path(), help="Neuron-set JSON from lna-identify.")
@click.option("--responses", default=None, type=click.Path(),
              help="Responses JSONL written by lna-profile (default: the one beside the neurons' store).")
@click.option("--dataset", default=None, help="Instead of --responses: a dataset that carries responses (JSONL).")
@click.option("--langs", default="all", show_default=True,
              help="Target (and deactivated) languages: 'all' of the data, or codes en,zh,...")
@click.option("--setting", "settings", multiple=True, default=("specific", "specific+related"),
              show_default=True,
              help="specific, specific+related, or a neuron-set JSON file (named by its stem); repeatable.")
@click.option("-o", "--out", required=True, type=click.Path(),
              help="Output folder (an unfinished run there is resumed).")
@click.option("--backend", type=click.Choice(["auto", "hf", "vllm"]), default="auto", show_default=True)
@click.option("--device", default=None, help="cpu or cuda (default: cuda where available).")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default=None,
              help="Default: bfloat16 on cuda, float32 on cpu.")
@click.option("--template", default=None,
              help="Prompt template for --dataset: mathoctopus, plain, chat or a FILE (default: as lna-profile).")
@click.option("--revision", default=None, help="Branch, tag or commit of a Hugging Face model (from the local cache).")
@click.option("--limit", type=int, default=None, help="Only the first N questions of each language.")
@click.option("--token-budget", type=int, default=None,
              help="Tokens per forward batch (default: 16384 cuda, 2048 cpu).")
@click.option("--checkpoint-every", default=60.0, show_default=True, help="Seconds between checkpoints.")
@click.option("--allow-other-model", is_flag=True, help="Ablate neuron sets identified on another model.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
def ablate(quiet, **kwargs):
    """Deactivate each language's neurons (SiLU(gate) := 0) and write the perplexity matrix
    PPL[baseline + deactivated language, target language] and its change against the
    baseline, for both settings of the paper (specific; specific + related) in one run.

    Writes DIR/ppl.json, ppl-SETTING.csv, change-SETTING.csv, change-SETTING.png (Figure 2
    of the paper) and nll.npz (per-sample NLLs; lets a rerun resume).
    """
    from lna.ablate import Options, run

    for key in ("limit", "token_budget"):
        if kwargs[key] is not None and kwargs[key] < 1:
            raise click.BadParameter(f"must be at least 1, got {kwargs[key]}", param_hint=f"--{key.replace('_', '-')}")
    run(Options(progress=not quiet, **kwargs))
