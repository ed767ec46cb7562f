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

    Refuses stores of other models, shapes or counting modes, any sample counted in two
    inputs (identified by its tokens, whatever the dataset's name), and shards of a run
    given twice, unfinished or missing (unless --partial)."""
    from lna.profiling.merge import run, summary

    merged = run(stores, out, force=force, partial=partial)
    click.echo(f"merged {len(stores)} stores into {out}: {summary(merged)}")
