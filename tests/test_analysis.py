"""Per-layer type counts and shared-by-N counts, against hand counts and plain set arithmetic."""
import numpy as np
import pytest

from lna.identification.analysis import layer_types, shared_by_n, summary, type_sets
from lna.identification.identify import identify_store
from lna.storage.import_counts import import_counts
from lna.identification.neurons import NeuronSets


def sets_of(per_lang, general, langs=("en", "zh", "ja"), neurons=10):
    as_arrays = {lang: [np.array(x, np.int64) for x in per_lang[lang]] for lang in langs}
    return NeuronSets("ternary", 0.01, 0.1, 0.5, list(langs), len(general), neurons, as_arrays,
                      [np.array(g, np.int64) for g in general])


HAND2 = sets_of({"en": [[1, 2], []], "zh": [[2], [6]], "ja": [[3], [4, 6]]}, [[7, 8], [5]])


def test_hand_counts():
    # Layer 0: 1 (en) and 3 (ja) are specific, 2 (en, zh) related, 7 and 8 general.
    # Layer 1: 4 (ja) specific, 6 (zh, ja) related, 5 general.
    by_n = shared_by_n(HAND2)
    np.testing.assert_array_equal(by_n, [[0, 2, 1, 2], [0, 1, 1, 1]])
    types = layer_types(HAND2)
    np.testing.assert_array_equal(types["specific"], [2, 1])
    np.testing.assert_array_equal(types["related"], [1, 1])
    np.testing.assert_array_equal(types["general"], [2, 1])
    assert HAND2.sizes() == {"en": {"all": 2, "specific": 1, "related": 1},
                             "zh": {"all": 2, "specific": 0, "related": 2},
                             "ja": {"all": 3, "specific": 2, "related": 1}}
    sets = type_sets(HAND2)
    assert sets["specific"] == {(0, 1), (0, 3), (1, 4)}
    assert sets["related"] == {(0, 2), (1, 6)}
    assert sets["general"] == {(0, 7), (0, 8), (1, 5)}


def test_listed_by_all_counts_as_general():
    # A selected neuron every language lists (possible with LAPE, never with the ternary
    # method) is above tau everywhere, so it is general, not related.
    lape = sets_of({"en": [[1, 2], []], "zh": [[2], [6]], "ja": [[2, 3], [4, 6]]}, [[2, 7, 8], [5]])
    np.testing.assert_array_equal(shared_by_n(lape), [[0, 2, 0, 3], [0, 1, 1, 1]])
    np.testing.assert_array_equal(layer_types(lape)["related"], [0, 1])


def test_released_counts_against_set_arithmetic(shared_data):
    ns = identify_store(import_counts([shared_data / "reference/mistralmathoctopus7b-mgsm-counts.npz"]))
    by_n = shared_by_n(ns)
    K = len(ns.languages)
    for layer in range(ns.layers):
        members = {}
        for lang in ns.languages:
            for h in ns.sets[lang][layer].tolist():
                members[h] = members.get(h, 0) + 1
        expected = np.bincount(list(members.values()), minlength=K + 1)
        expected[K] = len(ns.general[layer])
        np.testing.assert_array_equal(by_n[layer], expected)
    # The specific neurons are exactly the per-language specific sizes summed.
    assert by_n[:, 1].sum() == sum(s["specific"] for s in ns.sizes().values())
    # The paper's picture (docs/method.md, "Analyses in the paper"): specific and related
    # neurons in the first layers and the last third, almost none in the middle; general
    # neurons maximal in the last layer.
    types = layer_types(ns)
    lang_neurons = types["specific"] + types["related"]
    assert lang_neurons[5:18].sum() < 0.02 * lang_neurons.sum()  # layers 5-17 of 32
    assert lang_neurons[:5].sum() > 0.1 * lang_neurons.sum()
    assert lang_neurons[-11:].sum() > 0.5 * lang_neurons.sum()
    assert types["general"].argmax() == ns.layers - 1


def test_summary_lines():
    text = summary(HAND2)
    assert "tau 0.500000" in text and "lambda 0.1" in text
    assert "1: 3, 2: 2; general (N=3): 3" in text
    assert any(line.split()[:4] == ["ja", "3", "2", "1"] for line in text.splitlines())


@pytest.mark.parametrize("kind", ["specific", "related"])
def test_split_partitions_sets(kind):
    part = HAND2.split(kind)
    other = HAND2.split("related" if kind == "specific" else "specific")
    for lang in HAND2.languages:
        for layer in range(HAND2.layers):
            assert not set(part[lang][layer].tolist()) & set(other[lang][layer].tolist())
