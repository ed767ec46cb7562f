"""`lna-identify STORE -o NEURONS.json`: language-specific, -related and general neurons."""
import click


def identify_options(f):
    """The identification knobs, shared by lna-identify and lna-report."""
    options = [
        click.option("--method", type=click.Choice(["ternary", "lape"]), default="ternary", show_default=True,
                     help="ternary: the study's entropy - lambda x max; lape: Tang et al."),
        click.option("--top-rate", type=click.FloatRange(0, 1, min_open=True), default=0.01, show_default=True,
                     help="Fraction of all neurons selected (lowest scores)."),
        click.option("--tau-quantile", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.95,
                     show_default=True, help="tau is this quantile of all activation probabilities."),
        click.option("--lambda", "lam", default="auto", show_default=True,
                     help="Weight of the max-probability term, or auto (largest in [0, 0.2] "
                          "with no selected neuron shared by all languages)."),
        click.option("--langs", default=None, help="Identify over these languages only (e.g. en,zh,ja; default: all "
                                                   "of the store)."),
        click.option("--allow-partial", is_flag=True, help="Accept a store from an unfinished profile."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def parse_identify_options(method, top_rate, tau_quantile, lam, langs) -> dict:
    """Click values -> keyword arguments of lna.identification.identify.identify_store."""
    from lna.core.errors import LnaError

    if lam != "auto":
        try:
            lam = float(lam)
        except ValueError:
            raise LnaError(f"--lambda must be a number or auto, got {lam!r}") from None
        if not 0 <= lam < float("inf"):  # a negative weight rewards low maxima: empty sets
            raise LnaError(f"--lambda must be auto or a number >= 0, got {lam:g}")
        if method == "lape":
            raise LnaError("--lambda applies to the ternary method only; drop it for --method lape")
    return {"method": method, "top_rate": top_rate, "tau_quantile": tau_quantile, "lam": lam,
            "langs": langs}


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
