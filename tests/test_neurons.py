"""Neuron-set JSON: round trip, validation on read, the released .pt mask layout."""
import json

import numpy as np
import pytest
import torch

from lna.identification import neurons
from lna.core.errors import LnaError
from lna.identification.identify import identify


@pytest.fixture
def ns():
    rng = np.random.default_rng(0)
    p = rng.beta(5.0, 30.0, (3, 4, 120))  # quiet, even background
    p[:, :, :2] = 0.99  # on for everyone: general
    p[0, :, 10:14] = 0.0
    p[0, [0, 1, 2, 3], [10, 11, 12, 13]] = 0.95  # each on for one language: specific
    p[1, :, 20:22] = 0.0
    p[1, [0, 1, 2, 3], [20, 20, 21, 21]] = 0.9  # on for two languages: related
    return identify(p, ["en", "zh", "ja", "sw"], top_rate=0.05, source={"store": "x.zarr"})


def as_lists(per_layer):
    return [a.tolist() for a in per_layer]


def test_round_trip(ns, tmp_path):
    path = neurons.save(ns, tmp_path / "n.json")
    obj = json.loads(path.read_text())
    for key in ("method", "top_rate", "lambda", "tau", "languages", "layers", "neurons", "sets", "general", "source"):
        assert key in obj
    assert obj["sets"]["en"] == as_lists(ns.sets["en"])
    back = neurons.load(path)
    assert back.languages == ns.languages and back.tau == ns.tau and back.lam == ns.lam
    for lang in ns.languages:
        assert as_lists(back.sets[lang]) == as_lists(ns.sets[lang])
    assert as_lists(back.general) == as_lists(ns.general)
    assert [f.name for f in tmp_path.iterdir()] == ["n.json"]


def test_specific_and_related_split(ns):
    spec, rel = ns.split("specific"), ns.split("related")
    for k, lang in enumerate(ns.languages):
        assert 10 + k in spec[lang][0]
        assert 20 + k // 2 in rel[lang][1]
    # A neuron is specific iff exactly one language lists it; the parts cover the set.
    for lang in ns.languages:
        for layer in range(ns.layers):
            listed = ns.sets[lang][layer]
            assert sorted(spec[lang][layer].tolist() + rel[lang][layer].tolist()) == listed.tolist()
            for h in spec[lang][layer]:
                assert sum(h in ns.sets[other][layer] for other in ns.languages) == 1
            for h in rel[lang][layer]:
                assert sum(h in ns.sets[other][layer] for other in ns.languages) > 1


def test_export_pt(ns, tmp_path):
    neurons.export_pt(ns, tmp_path / "mask.pt")
    mask = torch.load(tmp_path / "mask.pt", weights_only=True)
    assert len(mask) == len(ns.languages)
    for k, lang in enumerate(ns.languages):
        assert len(mask[k]) == ns.layers
        for layer, t in enumerate(mask[k]):
            assert t.dtype == torch.long and t.tolist() == ns.sets[lang][layer].tolist()


def edit(obj, change):
    obj = json.loads(json.dumps(obj))
    change(obj)
    return obj


@pytest.mark.parametrize("change, message", [
    (lambda o: o.pop("tau"), "missing tau"),
    (lambda o: o["sets"].pop("zh"), "one entry per language"),
    (lambda o: o["sets"]["en"].pop(), "list of 3 per-layer lists"),
    (lambda o: o["sets"]["en"][0].append(10**6), "must lie in 0..119"),
    (lambda o: o["general"][0].reverse(), "sorted and unique"),
    (lambda o: o["sets"]["en"][0].append("x"), "must be integers"),
    (lambda o: o.update(languages=["en", "en", "ja", "sw"]), "twice"),
    (lambda o: o.update(layers=0), "positive integers"),
    (lambda o: o.update(tau="high"), "must be numbers"),
    (lambda o: o["specific"]["en"][0].clear(), "disagrees"),
])
def test_validation(ns, tmp_path, change, message):
    path = tmp_path / "n.json"
    path.write_text(json.dumps(edit(ns.to_json(), change)))
    with pytest.raises(LnaError, match=message):
        neurons.load(path)


def test_not_json(tmp_path):
    (tmp_path / "n.json").write_text("layer,specific\n0,1\n")
    with pytest.raises(LnaError, match="not a neuron-set JSON"):
        neurons.load(tmp_path / "n.json")
    (tmp_path / "l.json").write_text("[1, 2]")
    with pytest.raises(LnaError, match="not a neuron-set JSON object"):
        neurons.load(tmp_path / "l.json")
    with pytest.raises(LnaError, match="no such neuron-set file"):
        neurons.load(tmp_path / "missing.json")
