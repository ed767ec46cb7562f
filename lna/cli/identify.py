"""`lna-identify STORE -o NEURONS.json`: language-specific, -related and general neurons."""
import click

from lna.cli.options import identify_options, parse_identify_options


@click.command("identify")
@click.argument("store", type=click.Path())
@click.option("-o", "--out", required=True, type=click.Path(), help="Neuron-set JSON to write.")
@click.option("--export-pt", type=click.Path(), default=None,
              help="Also write the sets in the released .pt mask layout.")
@identify_options
def identify(store, out, export_pt, method, top_rate, tau_quantile, lam, langs, allow_partial):
    """Identify language neurons in a count STORE and write their sets as JSON."""
    from pathlib import Path

    from lna.identification import neurons
    from lna.identification.analysis import summary
    from lna.core.errors import LnaError
    from lna.identification.identify import identify_store
    from lna.storage.store import open_store

    for path in filter(None, (out, export_pt)):
        if Path(path).is_dir():
            raise LnaError(f"{path}: is a folder; give a file name")
    counts = open_store(store, allow_partial=allow_partial, sums=False)
    options = parse_identify_options(method, top_rate, tau_quantile, lam, langs)
    ns = identify_store(counts, source={"store": str(store)}, **options)
    neurons.save(ns, out)
    if export_pt:
        try:
            neurons.export_pt(ns, export_pt)
        except BaseException:
            Path(out).unlink(missing_ok=True)  # all outputs or none
            raise
    click.echo(summary(ns))
    click.echo(f"wrote {out}" + (f" and {export_pt}" if export_pt else ""))
