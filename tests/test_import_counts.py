"""Importing the study's released counts (.pt pairs, reference .npz) into a store."""
import numpy as np
import pytest
import torch

from lna.core.errors import LnaError
from lna.storage.import_counts import import_counts
from lna.profiling.merge import merge

NPZ = "reference/mistralmathoctopus7b-mgsm-counts.npz"


def write_release(folder, langs, full, prefix, full_tokens, prefix_tokens, tag="Mistral-x"):
    """Files in the release's layout: [language, layer, neuron] arrays, one .pt pair each."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, lang in enumerate(langs):
        torch.save({"total_tokens": int(full_tokens[k]), "over_zero": torch.as_tensor(full[k], dtype=torch.long)},
                   folder / f"activation.{lang}.{tag}.pt")
        torch.save({"total_tokens": int(prefix_tokens[k]), "over_zero": torch.as_tensor(prefix[k], dtype=torch.long)},
                   folder / f"prefix.activation.{lang}.{tag}.pt")
    return folder


def random_release(seed=0, langs=("en", "zh", "sw"), layers=2, neurons=7):
    rng = np.random.default_rng(seed)
    K = len(langs)
    prefix = rng.integers(0, 40, (K, layers, neurons))
    # Some differences negative, as the release's two-pass noise makes them.
    full = np.maximum(prefix + rng.integers(-3, 60, (K, layers, neurons)), 0)
    prefix_tokens = rng.integers(100, 200, K)
    full_tokens = prefix_tokens + rng.integers(50, 90, K)
    return list(langs), full, prefix, full_tokens, prefix_tokens


def reference_probs(full, prefix, full_tokens, prefix_tokens):
    """The study's formula, [language, layer, neuron] -> [layer, language, neuron]."""
    p = np.clip(full.astype(np.int64) - prefix, 0, None) / np.maximum(full_tokens - prefix_tokens, 1)[:, None, None]
    return p.transpose(1, 0, 2)


def test_pt_folder_matches_formula(tmp_path):
    langs, full, prefix, ft, pt = random_release()
    store = import_counts([write_release(tmp_path / "rel", langs, full, prefix, ft, pt)])
    assert store.languages == ["en", "zh", "sw"]  # study order
    np.testing.assert_array_equal(store.counts, np.clip(full - prefix, 0, None).transpose(1, 0, 2))
    np.testing.assert_array_equal(store.tokens, ft - pt)
    np.testing.assert_array_equal(store.probabilities(), reference_probs(full, prefix, ft, pt))
    assert store.meta["provenance"] == "import" and store.meta["counted"] == "response-tokens"
    assert store.meta["model"] == "kevinpro/MistralMathOctopus-7B"


def test_pt_files_and_npz_agree(tmp_path):
    langs, full, prefix, ft, pt = random_release(seed=1)
    folder = write_release(tmp_path / "rel", langs, full, prefix, ft, pt)
    np.savez(tmp_path / "c.npz", langs=np.array(langs), full_counts=full.astype(np.int32),
             prefix_counts=prefix.astype(np.int32), full_tokens=ft, prefix_tokens=pt)
    from_files = import_counts(sorted(folder.glob("*.pt")))
    from_npz = import_counts([tmp_path / "c.npz"])
    np.testing.assert_array_equal(from_files.counts, from_npz.counts)
    np.testing.assert_array_equal(from_files.tokens, from_npz.tokens)
    # The same counts imported twice are recognised whatever the file format.
    with pytest.raises(LnaError, match="count them twice"):
        merge([from_files, from_npz])


def test_languages_from_several_sources_merge(tmp_path):
    langs, full, prefix, ft, pt = random_release(seed=2)
    a = write_release(tmp_path / "a", langs[:1], full[:1], prefix[:1], ft[:1], pt[:1])
    b = write_release(tmp_path / "b", langs[1:], full[1:], prefix[1:], ft[1:], pt[1:])
    both = import_counts([a, b])
    merged = merge([import_counts([a]), import_counts([b])])
    np.testing.assert_array_equal(both.counts, merged.counts)
    assert merged.languages == both.languages == langs


def test_reference_npz(shared_data):
    with np.load(shared_data / NPZ) as z:
        data = {k: z[k] for k in z.files}
    store = import_counts([shared_data / NPZ])
    assert store.languages == [str(x) for x in data["langs"]] == "en ru es fr de zh ja bn th sw".split()
    assert (store.layers, store.neurons) == (32, 14336)
    ref = reference_probs(data["full_counts"], data["prefix_counts"], data["full_tokens"], data["prefix_tokens"])
    np.testing.assert_array_equal(store.probabilities(), ref)
    assert (ref > 1).sum() == 12  # the release's noise, kept as the study keeps it


def test_reference_slices_as_pt(shared_data, tmp_path):
    """The .pt path on real numbers: slices of the release written in its own layout."""
    with np.load(shared_data / NPZ) as z:
        langs = [str(x) for x in z["langs"]][:4]
        full, prefix = z["full_counts"][:4, ::8, :300], z["prefix_counts"][:4, ::8, :300]
        ft, pt = z["full_tokens"][:4], z["prefix_tokens"][:4]
    store = import_counts([write_release(tmp_path / "rel", langs, full, prefix, ft, pt)])
    order = [langs.index(x) for x in store.languages]
    np.testing.assert_array_equal(store.probabilities(),
                                  reference_probs(full[order], prefix[order], ft[order], pt[order]))


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file"),
    ("text-pt", "not a readable torch file"),
    ("wrong-dict", "not the released layout"),
    ("no-prefix", "pair prefix.activation.en.t.pt is missing"),
    ("unknown-lang", "unknown language 'xx'"),
    ("swapped", "swapped"),
    ("bad-npz", "missing full_counts"),
    ("empty-dir", "no activation"),
    ("other-suffix", "not a released count file"),
    ("two-tags", "several count files for en"),
    ("shapes", "shape"),
])
def test_bad_inputs(tmp_path, case, message):
    t = {"total_tokens": 10, "over_zero": torch.zeros(2, 3, dtype=torch.long)}
    src = tmp_path / "src"
    src.mkdir()
    if case == "missing":
        src = tmp_path / "nope"
    elif case == "text-pt":
        (src / "activation.en.t.pt").write_text("hello")
        torch.save(t, src / "prefix.activation.en.t.pt")
    elif case == "wrong-dict":
        torch.save({"n": 3}, src / "activation.en.t.pt")
        torch.save(t, src / "prefix.activation.en.t.pt")
    elif case == "no-prefix":
        torch.save(t, src / "activation.en.t.pt")
    elif case == "unknown-lang":
        torch.save(t, src / "activation.xx.t.pt")
        torch.save(t, src / "prefix.activation.xx.t.pt")
    elif case == "swapped":
        torch.save({**t, "total_tokens": 5}, src / "activation.en.t.pt")
        torch.save(t, src / "prefix.activation.en.t.pt")
    elif case == "bad-npz":
        np.savez(src / "c.npz", langs=np.array(["en"]))
        src = src / "c.npz"
    elif case == "other-suffix":
        (src / "counts.txt").write_text("1 2 3")
        src = src / "counts.txt"
    elif case == "two-tags":
        for tag in ("a", "b"):
            torch.save(t, src / f"activation.en.{tag}.pt")
            torch.save(t, src / f"prefix.activation.en.{tag}.pt")
    elif case == "shapes":
        torch.save(t, src / "activation.en.t.pt")
        torch.save({**t, "over_zero": torch.zeros(2, 4, dtype=torch.long)}, src / "prefix.activation.en.t.pt")
    with pytest.raises(LnaError, match=message):
        import_counts([src])
