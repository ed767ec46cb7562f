"""`lna merge STORE... -o STORE`: sum count stores of one model (shards, extra languages)."""
import click

from lna.store import merge as merge_stores
from lna.store import open_store, save_store


@click.command("merge")
@click.argument("stores", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--out", required=True, type=click.Path(), help="Output store.")
def merge(stores, out):
    """Sum count stores of the same model; refuses other models, shapes or counting modes."""
    merged = merge_stores([open_store(s) for s in stores])
    save_store(merged, out)
    click.echo(f"merged {len(stores)} stores into {out}: languages {', '.join(merged.languages)}")
