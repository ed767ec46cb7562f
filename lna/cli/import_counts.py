"""`lna import-counts SRC... -o STORE`: the study's released counts into a count store."""
import click

from lna.storage.import_counts import DEFAULT_MODEL


@click.command("import-counts")
@click.argument("sources", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--out", required=True, type=click.Path(), help="Count store to write.")
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="Model id the counts belong to.")
@click.option("--dataset", default=None, help="Dataset the counts were made on (e.g. mgsm).")
@click.option("--force", is_flag=True, help="Replace OUT if it is already a count store.")
def import_counts(sources, out, model, dataset, force):
    """Import released counts: a folder of activation.LANG.TAG.pt files, such files (both
    passes: activation.* and prefix.activation.*), or the reference .npz.

    Response-token counts are full - prefix (clamped at 0), as the study computes them.
    """
    from pathlib import Path

    from lna.core import lock
    from lna.core.errors import LnaError
    from lna.storage.import_counts import import_counts as read
    from lna.storage.store import save_store

    lock.acquire(out, "count store")  # first: a device, FIFO or socket is refused as such
    if Path(out).exists() and not force:
        raise LnaError(f"{out}: already exists; give --force to replace it, or import elsewhere "
                       "and combine with lna merge")
    store = read(sources, model=model, dataset=dataset)
    save_store(store, out)
    click.echo(f"imported {len(store.languages)} languages ({', '.join(store.languages)}), "
               f"{store.layers} layers x {store.neurons} neurons into {out}")
    click.echo("response tokens: " + ", ".join(f"{lang} {n}" for lang, n in zip(store.languages, store.tokens)))
