"""Language presets: --langs study / all, the study's order, the registry."""
import json

import numpy as np
import pytest

from lna.inputs import data

from lna.core import languages
from lna.cli import run
from lna.cli.profile import profile
from lna.storage.store import open_store

# The order of the study's released artefacts, read from them where they are at hand.
RELEASE_ORDER = ["en", "ru", "es", "fr", "de", "zh", "ja", "bn", "th", "sw"]


def test_study_order_is_the_order_of_the_released_counts_and_masks(shared_data):
    npz = np.load(shared_data / "reference" / "mistralmathoctopus7b-mgsm-counts.npz")
    assert [str(x) for x in npz["langs"]] == RELEASE_ORDER == list(languages.STUDY)
    mask = json.loads((shared_data / "reference" / "mistralmathoctopus7b-mgsm-mask-0.01-0.109375.json").read_text())
    assert list(mask) == RELEASE_ORDER


def test_paper_table_order_is_a_permutation_of_the_study():
    assert sorted(languages.PAPER_TABLE_ORDER) == sorted(languages.STUDY)
    assert languages.order(["en", "te", "bn", "zh"], languages.PAPER_TABLE_ORDER) == ["bn", "zh", "en", "te"]


def test_profile_langs_study_on_mgsm_gives_the_ten_in_the_study_order(shared_data, tmp_path, capsys):
    out = tmp_path / "s.zarr"
    args = ["--model", "lna:tiny-llama", "--dataset", str(shared_data / "mgsm"), "--out", str(out),
            "--limit", "1", "--samples", "1", "--max-new-tokens", "3"]
    assert run(profile, "lna-profile", ["-q", "--langs", "study", *args]) == 0
    assert open_store(out).languages == RELEASE_ORDER
    # all: every language of the data (MGSM adds te)
    _, qs = data.load(str(shared_data / "mgsm"), "all", limit=1)
    assert [q.lang for q in qs] == RELEASE_ORDER + ["te"]


def test_langs_all_says_when_it_differs_from_the_study(tmp_path, capsys):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"lang": lang, "query": "1+1?", "responses": [" 2"]})
                              for lang in ["te", "en", "zh"]) + "\n", encoding="utf-8")
    out = tmp_path / "s.zarr"
    assert run(profile, "lna-profile", ["--model", "lna:tiny-llama", "--dataset", str(path), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "--langs all: the data has en, zh, te; beyond the study's ten: te; not ru, es, fr, de, ja, bn, th, sw" in err
    assert open_store(out).languages == ["en", "zh", "te"]


def test_langs_study_names_what_the_data_lacks(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"lang": "en", "query": "1+1?"}) + "\n")
    with pytest.raises(Exception, match="the data has no ru, es, fr, de, zh, ja, bn, th, sw: it has en"):
        data.load(str(path), "study")


def test_registry_languages_with_scripts_and_nllb_codes():
    for code, name, nllb, script in [("te", "Telugu", "tel_Telu", "Telu"), ("ar", "Arabic", "arb_Arab", "Arab"),
                                     ("am", "Amharic", "amh_Ethi", "Ethi"), ("zh-Hant", "Traditional Chinese",
                                                                           "zho_Hant", "Hant")]:
        lang = languages.get(code)
        assert (lang.name, lang.nllb, lang.script) == (name, nllb, script)
        assert languages.get(name) is lang and lang.nllb.endswith("_" + lang.script)
    assert languages.code_of("amh") == "am" and languages.code_of("swa") == "sw"  # AfriMGSM-style codes
    codes = [lang.nllb for lang in languages._REGISTRY.values()]
    assert len(codes) == len(set(codes)) and all(len(c.split("_")[0]) == 3 for c in codes)
