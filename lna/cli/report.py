"""`lna-report STORE_OR_NEURONS -o DIR`: per-layer tables and figures of the neuron types."""
import click

from lna.cli.options import identify_options, parse_identify_options


@click.command("report")
@click.argument("source", type=click.Path())
@click.option("-o", "--out", required=True, type=click.Path(), help="Folder for the CSVs and PNGs.")
@identify_options
def report(source, out, method, top_rate, tau_quantile, lam, langs, allow_partial):
    """Tables and figures of SOURCE, a neuron-set JSON or a count store (identified first
    with the options below; the sets are saved as DIR/neurons.json).

    Writes layers.csv and layers.png (specific, related and general neurons per layer: the
    paper's Figure 3), shared_by_n.csv and shared_by_n.png (neurons shared by N languages:
    Figure 10) and languages.csv (set sizes per language).
    """
    from pathlib import Path

    from lna.identification.analysis import summary, write_report
    from lna.core.errors import LnaError
    from lna.identification.identify import neuron_sets_from
    from lna.storage.store import is_store

    path = Path(source)
    if not path.exists():
        raise LnaError(f"{source}: no such count store or neuron-set file")
    from_store = path.is_dir() or is_store(path)
    options = parse_identify_options(method, top_rate, tau_quantile, lam, langs) if from_store else {}
    if not from_store:
        defaults = dict(method="ternary", top_rate=0.01, tau_quantile=0.95, lam="auto", langs=None)
        given = dict(method=method, top_rate=top_rate, tau_quantile=tau_quantile, lam=lam, langs=langs)
        changed = [k for k in defaults if given[k] != defaults[k]]
        if changed:
            raise LnaError(f"{source}: identification options ({', '.join(changed)}) need a count store, "
                           "not a neuron-set file")
    ns = neuron_sets_from(path, allow_partial=allow_partial, **options)
    files = write_report(ns, out, with_neurons=from_store)
    click.echo(summary(ns))
    click.echo(f"wrote {', '.join(files)} to {out}")
