"""Analyses of neuron sets (method.md, "Analyses in the paper").

Per neuron, N is the number of languages whose set lists it. Among the selected neurons
N = 1 is language-specific and 1 < N < l language-related; general neurons (above tau for
all l languages) fill the column N = l of the shared-by-N counts, so the counts per N cover
the three types (Figures 3, 5 and 10 of the paper).
"""
import numpy as np

from lna.neurons import NeuronSets

TYPES = ("specific", "related", "general")


def shared_by_n(ns: NeuronSets) -> np.ndarray:
    """int [layer, N] for N = 0..l: neurons of each layer shared by exactly N languages
    (column 0 is always 0; column l holds the general neurons)."""
    K = len(ns.languages)
    out = np.zeros((ns.layers, K + 1), np.int64)
    for layer, (_, n) in enumerate(ns.shared_by()):
        out[layer] += np.bincount(n[n < K], minlength=K + 1)
        out[layer, K] = len(ns.general[layer])
    return out


def layer_types(ns: NeuronSets) -> dict:
    """{type: int [layer]} numbers of specific, related and general neurons per layer."""
    by_n = shared_by_n(ns)
    return {"specific": by_n[:, 1], "related": by_n[:, 2:-1].sum(axis=1), "general": by_n[:, -1]}


def type_sets(ns: NeuronSets) -> dict:
    """{type: set of (layer, neuron)} for overlap ratios."""
    out = {t: set() for t in TYPES}
    K = len(ns.languages)
    for layer, (idx, n) in enumerate(ns.shared_by()):
        out["specific"].update((layer, int(i)) for i in idx[n == 1])
        out["related"].update((layer, int(i)) for i in idx[(n > 1) & (n < K)])
        out["general"].update((layer, int(i)) for i in ns.general[layer])
    return out


def summary(ns: NeuronSets) -> str:
    """A few lines for the terminal: tau, lambda, per-language sizes, neurons by N."""
    K = len(ns.languages)
    lam = "-" if ns.lam is None else f"{ns.lam:g}" + (" (auto)" if ns.lambda_auto else "")
    lines = [f"{ns.method}: tau {ns.tau:.6f} ({ns.tau_quantile:g} quantile), lambda {lam}, "
             f"top rate {ns.top_rate:g} of {ns.layers} x {ns.neurons} neurons"]
    sizes = ns.sizes()
    width = max(len(x) for x in ns.languages + ["language"])
    lines.append(f"  {'language':<{width}}  {'all':>6} {'specific':>8} {'related':>7}")
    for lang in ns.languages:
        s = sizes[lang]
        lines.append(f"  {lang:<{width}}  {s['all']:>6} {s['specific']:>8} {s['related']:>7}")
    total = shared_by_n(ns).sum(axis=0)
    by_n = ", ".join(f"{n}: {total[n]}" for n in range(1, K))
    lines.append(f"  neurons shared by N languages: {by_n}; general (N={K}): {total[K]}")
    return "\n".join(lines)


# -- tables -------------------------------------------------------------------------------
def layer_table(ns: NeuronSets) -> tuple[list, list]:
    types = layer_types(ns)
    rows = [[layer] + [int(types[t][layer]) for t in TYPES] for layer in range(ns.layers)]
    return ["layer", *TYPES], rows


def shared_table(ns: NeuronSets) -> tuple[list, list]:
    """Rows: N, neurons shared by N languages (all layers), then one column per layer."""
    by_n = shared_by_n(ns)
    K = len(ns.languages)
    header = ["N", "type", "neurons"] + [f"layer{i}" for i in range(ns.layers)]
    rows = [[n, _type_of(n, K), int(by_n[:, n].sum())] + [int(x) for x in by_n[:, n]] for n in range(1, K + 1)]
    return header, rows


def language_table(ns: NeuronSets) -> tuple[list, list]:
    sizes = ns.sizes()
    return ["language", "all", "specific", "related"], [
        [lang, sizes[lang]["all"], sizes[lang]["specific"], sizes[lang]["related"]] for lang in ns.languages]


def _type_of(n: int, K: int) -> str:
    return "specific" if n == 1 else "general" if n == K else "related"


def write_csv(path, header, rows) -> None:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


# -- outputs ------------------------------------------------------------------------------
def staged_dir(out):
    """Context manager: write into a hidden folder beside OUT, move the files into OUT only
    when everything succeeded (no half-written report)."""
    import contextlib
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from lna.errors import LnaError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LnaError(f"{out}: exists and is not a folder; give an output folder")
    base = out.parent
    while not base.exists():
        base = base.parent

    @contextlib.contextmanager
    def stage():
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=base))
        try:
            yield tmp
            out.mkdir(parents=True, exist_ok=True)
            for f in sorted(tmp.iterdir()):
                os.replace(f, out / f.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    return stage()


def write_report(ns: NeuronSets, out, *, with_neurons: bool = False) -> list:
    """CSV tables and figures of one set of neurons into folder `out`; returns the file names."""
    from lna import neurons, plots

    with staged_dir(out) as tmp:
        write_csv(tmp / "layers.csv", *layer_table(ns))
        write_csv(tmp / "shared_by_n.csv", *shared_table(ns))
        write_csv(tmp / "languages.csv", *language_table(ns))
        name = ns.source.get("model") or "neurons"
        plots.layer_types(layer_types(ns), tmp / "layers.png", title=f"{name}: neurons per layer")
        plots.shared_by_n({name: shared_by_n(ns).sum(axis=0)[1:]}, tmp / "shared_by_n.png",
                          title=f"{name}: neurons shared by N languages")
        if with_neurons:
            neurons.save(ns, tmp / "neurons.json")
        return sorted(p.name for p in tmp.iterdir())
