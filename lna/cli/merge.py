"""`lna merge STORE... -o STORE`: sum count stores of one model (shards, extra languages)."""
import click


@click.command("merge")
@click.argument("stores", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--out", required=True, type=click.Path(), help="Output store (refused if it exists).")
@click.option("--force", is_flag=True, help="Replace OUT if it is already a count store.")
@click.option("--partial", is_flag=True,
              help="Accept an incomplete set of shards (lna-profile --shard K/N) of a run: OUT records which "
                   "shards it holds, and the missing ones can be merged into it later.")
def merge(stores, out, force, partial):
    """Sum count stores of the same model (disjoint shards of samples, extra languages).

    Refuses stores of other models or shapes, of another meaning of a count (what was
    counted, the activation) or of other settings that change counts (dtype, prompt
    template, kernel version, sampling settings), any sample counted in two inputs
    (identified by its tokens, whatever the dataset's name), and shards of a run given
    twice, unfinished or missing (unless --partial). Stores counted while sampling and by
    force-decoding merge (the same quantity)."""
    from lna.profiling.merge import run, summary

    merged = run(stores, out, force=force, partial=partial)
    click.echo(f"merged {len(stores)} store{'s' if len(stores) != 1 else ''} into {out}: {summary(merged)}")
