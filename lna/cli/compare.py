"""`lna-compare BASE OTHER... -o DIR`: neuron types before vs after alignment (or across
datasets, or along checkpoints): the paper's Figures 4, 5, 10 and Tables 2-4."""
import click

from lna.cli.options import identify_options, parse_identify_options


@click.command("compare")
@click.argument("sources", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--out", required=True, type=click.Path(), help="Folder for the CSVs and PNGs.")
@click.option("--names", default=None, help="Comma-separated names of the inputs (default: file names).")
@click.option("--trained-langs", default=None,
              help="Languages used in alignment (e.g. zh,ja,ru): adds the spontaneous-alignment table.")
@click.option("--series", is_flag=True,
              help="The inputs after BASE are checkpoints in training order: also draw the layer-wise change "
                   "per type along them (series_<type>.png, Figures 12-14), series_totals.png and series.csv.")
@identify_options
def compare(sources, out, names, trained_langs, series, method, top_rate, tau_quantile, lam, langs, allow_partial):
    """Compare BASE (first) with each later source; each is a count store (identified with
    the options below) or a neuron-set JSON.

    Writes, per comparison: layer_change.csv/.png (change per type per layer, Figure 4),
    shared_by_n_change.csv/.png (change in neurons shared by N languages, Figure 5),
    shared_by_n.png (both, Figure 10), languages.csv (per-language sizes),
    overlap.csv (neurons in common per type, Table 4), spontaneous_alignment.csv with
    --trained-langs (Table 2); and for all inputs models.csv (totals; a checkpoint series
    reads down it) and english.csv (English vs non-English means, Table 3).
    With --series: series.csv and the series figures (e.g. `lna-compare base.zarr
    step-100.zarr step-200.zarr ... --series --names 0,100,200,...`).
    """
    from pathlib import Path

    from lna.identification.analysis import write_comparison
    from lna.reports.tables import row_names
    from lna.core.errors import LnaError
    from lna.identification.identify import neuron_sets_from
    from lna.core.languages import parse_langs
    from lna.storage.store import is_store

    if len(sources) < 2:
        raise LnaError("give at least two inputs: BASE and one to compare with it")
    labels = row_names([x.strip() for x in names.split(",")] if names else None, [_label(s) for s in sources],
                       shown=names, numbered="{name}{i}")
    options = parse_identify_options(method, top_rate, tau_quantile, lam, langs)
    models = {}
    for label, source in zip(labels, sources):
        path = Path(source)
        if not path.exists():
            raise LnaError(f"{source}: no such count store or neuron-set file")
        from_store = path.is_dir() or is_store(path)
        models[label] = neuron_sets_from(path, allow_partial=allow_partial, **(options if from_store else {}))
    trained = parse_langs(trained_langs) if trained_langs else None
    files, text = write_comparison(models, out, trained=trained, series=series)
    click.echo(text)
    click.echo(f"wrote {', '.join(files)} to {out}")


def _label(source: str) -> str:
    from pathlib import Path

    path = Path(source.rstrip("/"))
    return path.stem if path.suffix in (".json", ".zarr") else path.name
