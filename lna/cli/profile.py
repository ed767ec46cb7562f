"""`lna-profile`: count activations of response tokens per language into a store."""
import click


@click.command("profile")
@click.option("--model", required=True, help="Hugging Face id (from the local cache), local folder, or lna:tiny-llama.")
@click.option("--langs", default="all", show_default=True, help="'all' (every language of the data), 'study' (the study's ten) or codes: en,zh,...")
@click.option("--dataset", default="mgsm", show_default=True, help="mgsm, msvamp, demo, a folder like MGSM/MSVAMP, or a JSONL.")
@click.option("--out", "-o", default=None, help="Count store to write (default: <model>.<dataset>.zarr); an existing one is resumed.")
@click.option("--backend", type=click.Choice(["auto", "hf", "vllm"]), default="auto", show_default=True)
@click.option("--device", default=None, help="cpu or cuda (default: cuda where available).")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default=None,
              help="Default: bfloat16 on cuda, float32 on cpu.")
@click.option("--responses", default=None, help="Responses JSONL (default: beside the store; sampled if missing).")
@click.option("--template", default=None,
              help="mathoctopus, plain, chat (the tokenizer's chat template) or a FILE with {query} "
                   "(default: the model's preset in configs/models.yaml, else chat where the tokenizer has one, "
                   "else mathoctopus).")
@click.option("--revision", default=None, help="Branch, tag or commit of a Hugging Face model (from the local cache).")
@click.option("--samples", "-n", default=10, show_default=True, help="Responses sampled per question.")
@click.option("--temperature", default=0.7, show_default=True)
@click.option("--top-p", default=0.95, show_default=True)
@click.option("--max-new-tokens", default=512, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--limit", type=int, default=None, help="Only the first N questions of each language.")
@click.option("--token-budget", type=int, default=None, help="Tokens per forward batch (default: 16384 cuda, 2048 cpu).")
@click.option("--checkpoint-every", default=60.0, show_default=True, help="Seconds between store checkpoints.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
def profile(quiet, **kwargs):
    """Force-decode responses through counting MLPs and write a count store."""
    from lna.profile import Options, run

    for key in ("samples", "max_new_tokens", "limit", "token_budget"):
        if kwargs[key] is not None and kwargs[key] < 1:
            raise click.BadParameter(f"must be at least 1, got {kwargs[key]}", param_hint=f"--{key.replace('_', '-')}")
    run(Options(progress=not quiet, **kwargs))
