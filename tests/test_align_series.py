"""lna-compare --series (Figures 12-14): the series table against brute-force membership
counts of synthetic neuron sets, and the CLI's figures."""
import csv

from test_compare import ALIGNED as UNSORTED, BASE, brute, make

from lna.identification.analysis import series_table, write_comparison
from lna.cli import run
from lna.cli.compare import compare
from lna.identification.neurons import save

ALIGNED = make({x: [sorted(v) for v in UNSORTED.sets[x]] for x in UNSORTED.languages},
               [sorted(g) for g in UNSORTED.general])  # as lna-identify writes them
MID = make({"en": [[1], [7]], "zh": [[2, 3], [8]], "ja": [[2, 4], [7]]}, [[0, 5], [9]])


def per_layer(ns, t):
    types, _, _ = brute(ns)
    return [sum(1 for i, _ in types[t] if i == layer) for layer in range(ns.layers)]


def test_series_table_counts_and_changes_by_brute_force():
    models = {"base": BASE, "100": MID, "200": ALIGNED}
    header, rows = series_table(models)
    got = {(r[0], r[1], r[2]): (r[3], r[4]) for r in rows}
    assert len(got) == len(rows) == 3 * 3 * BASE.layers
    for name, ns in models.items():
        for t in ("specific", "related", "general"):
            for layer, n in enumerate(per_layer(ns, t)):
                assert got[(name, layer, t)] == (n, n - per_layer(BASE, t)[layer])


def test_compare_series_writes_its_figures(tmp_path):
    paths = []
    for name, ns in (("base", BASE), ("step-100", MID), ("step-200", ALIGNED)):
        paths.append(str(tmp_path / f"{name}.json"))
        save(ns, paths[-1])
    out = tmp_path / "cmp"
    assert run(compare, "lna-compare", [*paths, "--series", "-o", str(out)]) == 0
    for f in ("series.csv", "series_specific.png", "series_related.png", "series_general.png", "series_totals.png"):
        assert (out / f).stat().st_size > 0
    with open(out / "series.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["model"] for r in rows} == {"base", "step-100", "step-200"}
    files, _ = write_comparison({"base": BASE, "x": ALIGNED}, tmp_path / "plain")
    assert not any(f.startswith("series") for f in files)  # only with --series
