"""`lna-eval`: accuracy per language on MGSM/MSVAMP (Tables 1 and 5 of the paper)."""
import click

from lna.cli.options import model_option, runner_options, sampling_options


@click.command("eval")
@click.argument("sources", nargs=-1, type=click.Path())
@model_option(required=False,
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
@sampling_options(samples=1, temperature=0.0, top_p=1.0, max_new_tokens=1024,
                  samples_help="Responses per question.", temperature_help="0 is greedy decoding.",
                  max_new_tokens_help="As the study's evaluation (vllm_test.py).")
@runner_options(dtype="Default: bfloat16 on cuda, float32 on cpu.",
                template="Prompt template in configs/models.yaml (default: by model).",
                token_budget="Tokens per generation batch: rows x (prompt + --max-new-tokens) (default: 16384).",
                checkpoints=False)
@click.option("--table", "table_mode", is_flag=True,
              help="Combine SOURCES (accuracy.json files or lna-eval folders) into one table: -o DIR.")
@click.option("--names", default=None, help="With --table: comma-separated row names (default: each result's name).")
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
    from lna.evaluation.accuracy import markdown, table
    from lna.evaluation.eval import Options, run

    result = run(Options(progress=not quiet, **kwargs))
    click.echo(markdown(*table({result["name"]: result})), nl=False)
