"""lna-compare: before-vs-after tables against brute-force set arithmetic on synthetic sets."""
import csv

import numpy as np
import pytest

from lna.identification.analysis import write_comparison
from lna.cli import run
from lna.cli.compare import compare
from lna.core.errors import LnaError
from lna.identification.identify import identify
from lna.identification.neurons import NeuronSets
from lna.storage.counts import CountStore
from lna.storage.store import save_store

LANGS = ["en", "zh", "ja"]


def make(per_lang, general, neurons=10):
    return NeuronSets("ternary", 0.01, 0.1, 0.5, list(per_lang), len(general), neurons,
                      {x: [np.array(v, np.int64) for v in per_lang[x]] for x in per_lang},
                      [np.array(g, np.int64) for g in general])


def brute(ns):
    """{type: set of (layer, neuron)} and {lang: {type: count}} by plain membership counting."""
    K = len(ns.languages)
    members = {}
    for lang in ns.languages:
        for layer, idx in enumerate(ns.sets[lang]):
            for h in idx.tolist():
                members.setdefault((layer, h), []).append(lang)
    types = {"specific": {k for k, v in members.items() if len(v) == 1},
             "related": {k for k, v in members.items() if 1 < len(v) < K},
             "general": {(i, h) for i, g in enumerate(ns.general) for h in g.tolist()}}
    per_lang = {lang: {"specific": sum(1 for k, v in members.items() if v == [lang]),
                       "related": sum(1 for k, v in members.items() if lang in v and len(v) > 1)}
                for lang in ns.languages}
    by_n = [sum(1 for v in members.values() if len(v) == n) for n in range(1, K)] + [len(types["general"])]
    return types, per_lang, by_n


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


BASE = make({"en": [[1, 2], [7]], "zh": [[2, 3], []], "ja": [[4], [7, 8]]}, [[0], [9]])
ALIGNED = make({"en": [[1, 2], []], "zh": [[2, 3, 4], [8]], "ja": [[4], [8]]}, [[0, 5], [9, 6]])


def check_against_brute(base, other, out, trained):
    tb, lb, nb = brute(base)
    to, lo, no = brute(other)
    layers = read(out / "layer_change.csv")
    for t in ("specific", "related", "general"):
        for layer in range(base.layers):
            before = sum(1 for i, _ in tb[t] if i == layer)
            after = sum(1 for i, _ in to[t] if i == layer)
            row = layers[layer]
            assert (int(row[f"{t}_base"]), int(row[f"{t}_aligned"]), int(row[f"{t}_change"])) == \
                (before, after, after - before)
    shared = read(out / "shared_by_n_change.csv")
    assert [int(r["base"]) for r in shared] == nb
    assert [int(r["change"]) for r in shared] == [b - a for a, b in zip(nb, no)]
    overlap = {r["type"]: r for r in read(out / "overlap.csv")}
    for t in ("specific", "related", "general"):
        inter = len(tb[t] & to[t])
        smallest = min(len(tb[t]), len(to[t]))
        assert int(overlap[t]["shared"]) == inter
        if smallest:
            assert float(overlap[t]["overlap"]) == pytest.approx(inter / smallest, abs=1e-4)
    spont = {r["group"]: r for r in read(out / "spontaneous_alignment.csv")}
    for group, langs in (("trained", [x for x in base.languages if x in trained]),
                         ("other", [x for x in base.languages if x not in trained])):
        for t in ("specific", "related"):
            expected = np.mean([lo[x][t] - lb[x][t] for x in langs])
            assert float(spont[group][f"{t}_change"]) == pytest.approx(expected, abs=0.01)
    english = {(r["model"], r["group"]): r for r in read(out / "english.csv")}
    for name, per_lang in (("base", lb), ("aligned", lo)):
        assert float(english[(name, "English")]["specific"]) == per_lang["en"]["specific"]
        non = [x for x in base.languages if x != "en"]
        assert float(english[(name, "non-English")]["related"]) == pytest.approx(
            np.mean([per_lang[x]["related"] for x in non]), abs=0.01)


def test_hand_sets(tmp_path):
    files, text = write_comparison({"base": BASE, "aligned": ALIGNED}, tmp_path / "out", trained=["zh", "ja"])
    assert {"layer_change.csv", "layer_change.png", "shared_by_n_change.csv", "shared_by_n_change.png",
            "shared_by_n.png", "overlap.csv", "spontaneous_alignment.csv", "english.csv", "models.csv",
            "languages.csv"} == set(files)
    check_against_brute(BASE, ALIGNED, tmp_path / "out", ["zh", "ja"])
    assert "aligned vs base" in text and "trained languages (zh ja)" in text


def synthetic_pair(seed):
    """A base and an 'aligned' model whose probabilities are the base's, partly evened out."""
    rng = np.random.default_rng(seed)
    p = rng.beta(5.0, 30.0, (4, 3, 300))
    p[:, :, :5] = 0.99
    for k in range(3):
        p[0, k, 20 + 3 * k: 23 + 3 * k] = 0.9  # specific
        p[3, k, 40 + 3 * k: 43 + 3 * k] = 0.85
    p[3, :2, 60:63] = 0.88  # related (en, zh)
    q = p.copy()
    q[0, 1:, 20:23] = 0.8  # en's specific neurons: on for all after (general)
    q[0, 1, 26:29] = 0.8  # ja's: shared with zh after (related)
    return p, q


@pytest.mark.parametrize("seed", [0, 1])
def test_synthetic_identifications(seed, tmp_path):
    p, q = synthetic_pair(seed)
    base = identify(p, LANGS, top_rate=0.02)
    aligned = identify(q, LANGS, top_rate=0.02)
    write_comparison({"base": base, "aligned": aligned}, tmp_path / "out", trained=["zh"])
    check_against_brute(base, aligned, tmp_path / "out", ["zh"])


def test_refuses_different_shapes_and_languages(tmp_path):
    small = make({"en": [[1]], "zh": [[2]], "ja": [[]]}, [[0]])
    with pytest.raises(LnaError, match="different architectures"):
        write_comparison({"base": BASE, "small": small}, tmp_path / "out")
    two = make({"en": [[1], []], "zh": [[2], []]}, [[0], []])
    with pytest.raises(LnaError, match="same languages"):
        write_comparison({"base": BASE, "two": two}, tmp_path / "out")
    with pytest.raises(LnaError, match="trained-langs"):
        write_comparison({"base": BASE, "aligned": ALIGNED}, tmp_path / "out", trained=["sw"])
    assert list(tmp_path.iterdir()) == []


# -- through the CLI ------------------------------------------------------------------------------
def store_of(p, path, model="org/m"):
    tokens = np.full(p.shape[1], 10_000)
    return save_store(CountStore(np.round(p * 10_000).astype(np.int64), tokens, LANGS, {"model": model}), path)


def test_cli(tmp_path, capsys):
    p, q = synthetic_pair(2)
    a, b = store_of(p, tmp_path / "base.zarr"), store_of(q, tmp_path / "aligned.zarr")
    rc = run(compare, "lna-compare", [str(a), str(b), "-o", str(tmp_path / "out"), "--trained-langs", "zh",
                                      "--top-rate", "0.02"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "aligned vs base" in out
    check_against_brute(identify(a_probs(a), LANGS, top_rate=0.02), identify(a_probs(b), LANGS, top_rate=0.02),
                        tmp_path / "out", ["zh"])


def a_probs(path):
    from lna.storage.store import open_store

    return open_store(path).probabilities()


@pytest.mark.parametrize("args, message", [
    (["{a}"], "at least two"),
    (["{a}", "{missing}"], "no such count store"),
    (["{a}", "{text}"], "not a neuron-set JSON"),
    (["{a}", "{wide}"], "different architectures"),
    (["{a}", "{b}", "--trained-langs", "xx"], "unknown language 'xx'"),
    (["{a}", "{b}", "--trained-langs", "sw"], "trained-langs"),
    (["{a}", "{b}", "--names", "one"], "1 names for 2 inputs"),
    (["{a}", "{b}", "--langs", "en,xx"], "unknown language 'xx'"),
])
def test_cli_bad_inputs(tmp_path, capsys, args, message):
    p, q = synthetic_pair(3)
    paths = {"a": store_of(p, tmp_path / "a.zarr"), "b": store_of(q, tmp_path / "b.zarr"),
             "missing": tmp_path / "missing.zarr", "text": tmp_path / "t.txt",
             "wide": store_of(np.concatenate([p, p], axis=2), tmp_path / "w.zarr")}
    (tmp_path / "t.txt").write_text("hello")
    rc = run(compare, "lna-compare", [a.format(**paths) for a in args] + ["-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc != 0 and len(err.strip().splitlines()) == 1 and message in err, err
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.zarr", "b.zarr", "t.txt", "w.zarr"]
