"""`lna-eval`: accuracy per language on MGSM/MSVAMP (Tables 1 and 5 of the paper)."""
import click


@click.command("eval")
@click.argument("sources", nargs=-1, type=click.Path())
@click.option("--model", default=None,
              help="Hugging Face id (from the local cache), local folder, or lna:tiny-llama; it answers the questions "
                   "(with --responses: only names the row).")
@click.option("--dataset", default=None,
              help="mgsm (default), msvamp, demo, a folder like MGSM/MSVAMP, or a JSONL with 'answer's; with "
                   "--responses: where reference answers the file lacks come from.")
@click.option("--langs", default="all", show_default=True, help="'all' (every language of the data) or codes: en,zh,...")
@click.option("--responses", default=None, type=click.Path(),
              help="Score this responses JSONL instead of sampling: lna-profile's X.responses.jsonl or the study's "
                   "format ({lang, instruction, answers: [{generated}], answer}).")
@click.option("-o", "--out", default=None, type=click.Path(),
              help="Output folder (required); an unfinished sampling run there is resumed.")
@click.option("--name", default=None, help="Row label in the tables (default: the model's or file's name).")
@click.option("--extraction", type=click.Choice(["lna", "mapo"]), default="lna", show_default=True,
              help="lna: signs, decimal commas, thousands groups by language (docs/eval.md); mapo: the released "
                   "evaluation, quirks included (no sign, first response only).")
@click.option("--samples", "-n", default=1, show_default=True, help="Responses per question.")
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="0 is greedy decoding.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
              help="Nucleus sampling: sample among the most likely tokens holding this much probability.")
@click.option("--max-new-tokens", default=1024, show_default=True, help="As the study's evaluation (vllm_test.py).")
@click.option("--seed", default=0, show_default=True,
              help="Seed of the sampling (each batch of questions is seeded from it, so reruns agree).")
@click.option("--limit", type=int, default=None, help="Only the first N questions of each language.")
@click.option("--backend", type=click.Choice(["auto", "hf", "vllm"]), default="auto", show_default=True,
              help="hf: transformers; vllm: vLLM (pip install 'lna[vllm]'); auto: vllm where it is installed "
                   "and a GPU is present, else hf.")
@click.option("--device", default=None, help="cpu or cuda (default: cuda where available).")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default=None,
              help="Default: bfloat16 on cuda, float32 on cpu.")
@click.option("--template", default=None, help="Prompt template in configs/models.yaml (default: by model).")
@click.option("--token-budget", type=int, default=None, help="Tokens per generation batch (default: 16384 cuda, 2048 cpu).")
@click.option("--table", "table_mode", is_flag=True,
              help="Combine SOURCES (accuracy.json files or lna-eval folders) into one table: -o DIR.")
@click.option("--names", default=None, help="With --table: comma-separated row names (default: each result's name).")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
def eval_(sources, table_mode, names, quiet, **kwargs):
    """Accuracy of a model on multilingual math word problems, per language and on average:
    the last number of each response against the reference answer.

    \b
      lna-eval --model M --dataset mgsm -o DIR           the model answers (greedy)
      lna-eval --responses X.responses.jsonl -o DIR      score given responses
      lna-eval --table DIR_A DIR_B ... -o DIR            one table of several models

    Writes DIR/accuracy.json, verdicts.jsonl (each response: the number read, right or not),
    accuracy.csv and accuracy.md (rows = models; columns bn th sw ja zh ru de es fr en, Avg.;
    percent) and accuracy.png; with --model also DIR/responses.jsonl.
    """
    from lna.core.errors import LnaError

    if kwargs["out"] is None:
        raise click.UsageError("Missing option '-o' / '--out'.")
    if table_mode:
        given = [k for k in ("model", "dataset", "responses") if kwargs[k]]
        if given:
            raise LnaError(f"--table combines finished results; it takes no --{given[0]}")
        from lna.evaluation.eval import tabulate

        files, text = tabulate(list(sources), kwargs["out"], names=names.split(",") if names else None)
        click.echo(text, nl=False)
        click.echo(f"wrote {', '.join(files)} to {kwargs['out']}")
        return
    if sources:
        raise LnaError(f"unexpected argument {sources[0]!r}: files to combine go with --table")
    for key in ("samples", "max_new_tokens", "limit", "token_budget"):
        if kwargs[key] is not None and kwargs[key] < 1:
            raise click.BadParameter(f"must be at least 1, got {kwargs[key]}", param_hint=f"--{key.replace('_', '-')}")
    from lna.evaluation.accuracy import markdown, table
    from lna.evaluation.eval import Options, run

    result = run(Options(progress=not quiet, **kwargs))
    click.echo(markdown(*table({result["name"]: result})), nl=False)
