"""lna-steer and lna.steer (issue 11, parts 3-4): interventions built from neuron sets and a
store, the Python context manager, the language and script measures, and the command end
to end on a tiny model (outputs against the runner, shares and perplexities recomputed
independently, resume, refusals)."""
import json

import numpy as np
import pytest
import torch

from conftest import interrupt_after
import naive
from lna import cli
from lna.inputs import data, responses
from lna.interventions import intervene, langid
from lna.core.errors import LnaError
from lna.core import config
from lna.identification import neurons as neuron_file
from lna.identification.neurons import NeuronSets
from lna.storage.counts import CountStore
from lna.storage.store import open_store

DATA = [  # verbatim short prompts in three languages, with responses (references)
    {"lang": "en", "prompt": "Q: 2+3?\nA:", "responses": [" 2+3 = 5. The answer is 5."]},
    {"lang": "en", "prompt": "Q: 7-4?\nA:", "responses": [" 7-4 = 3. The answer is 3."]},
    {"lang": "en", "prompt": "Q: 6+1?\nA:", "responses": [" 6+1 = 7."]},
    {"lang": "zh", "prompt": "问：2加3？\n答：", "responses": [" 2加3等于5。答案是5。"]},
    {"lang": "zh", "prompt": "问：7减4？\n答：", "responses": [" 7减4等于3。答案是3。"]},
    {"lang": "ja", "prompt": "問：2たす3？\n答：", "responses": [" 2たす3は5です。"]},
]


def sets(layers=2, neurons=6, en=((0, 1), (2,)), zh=((1, 3), ())):
    as_arrays = (lambda per: [np.array(x, np.int64) for x in per])
    return NeuronSets("ternary", 0.01, 0.1, 0.5, ["en", "zh"], layers, neurons,
                      {"en": as_arrays(en), "zh": as_arrays(zh)}, [np.zeros(0, np.int64)] * layers)


def store(layers=2, neurons=6):
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 10, (layers, 2, neurons))
    return CountStore(counts, np.array([20, 10]), ["en", "zh"], {}, sums=rng.normal(size=counts.shape) * 5,
                      active_sums=counts * 0.7)


# -- building interventions --------------------------------------------------------------------------
def test_steering_zeroes_source_and_sets_target_to_its_mean():
    ns, st = sets(), store()
    iv = intervene.steering(ns, st, "en", "zh", 2.0)
    mean = st.sums[:, 1] / 10
    expect = np.zeros((2, 6), bool)
    expect[0, [0, 1, 3]] = expect[1, 2] = True
    assert np.array_equal(iv.mask, expect)
    assert iv.values[0, 0] == 0 and iv.values[1, 2] == 0  # en's: zeroed
    # zh's (neuron 1 is en's too: set wins), 2 x sums / tokens, rounded to float32
    assert iv.values[0, 1] == np.float32(2 * mean[0, 1]) and iv.values[0, 3] == np.float32(2 * mean[0, 3])
    active = intervene.steering(ns, st, "en", "zh", 1.0, value="active-mean")
    assert active.values[0, 3] == np.float32(0.7)  # active_sums / counts
    off = intervene.steering(ns, st, "en", "zh", None)  # en off, zh untouched
    assert off.mask.sum() == 3 and not off.values.any()
    only_first = intervene.steering(ns, st, "en", "zh", 2.0, layers=[1])
    assert not only_first.mask[0].any() and np.array_equal(only_first.mask[1], iv.mask[1])


def test_parse_layers():
    assert intervene.parse_layers(None, 4) == [("all", [0, 1, 2, 3])]
    assert intervene.parse_layers("0-1,3", 4) == [("0-1", [0, 1]), ("3", [3])]
    assert intervene.parse_layers("0+2-3", 4) == [("0+2-3", [0, 2, 3])]
    for bad, words in (("0-4", "outside"), ("a-b", "not a layer"), ("1,1", "twice"), (",", "no layers")):
        with pytest.raises(LnaError, match=words):
            intervene.parse_layers(bad, 4)


def test_unknown_language_and_missing_sums_are_one_line():
    with pytest.raises(LnaError, match="neuron sets have no 'ja'"):
        intervene.steering(sets(), store(), "en", "ja", 1.0)
    plain = CountStore(store().counts, np.array([20, 10]), ["en", "zh"])
    with pytest.raises(LnaError, match="no activation sums"):
        intervene.steering(sets(), plain, "en", "zh", 1.0)


# -- measures ------------------------------------------------------------------------------------------
def test_language_identifier_and_script_check():
    assert langid.identify("Der Junge hatte drei Äpfel und kaufte noch vier dazu.")[0] == "de"
    assert langid.identify("男孩原来有3个苹果，又买了4个。")[0] == "zh"
    assert langid.identify("少年はりんごを三つ持っています。")[0] == "ja"
    assert langid.identify("12 + 3 = 15")[0] == langid.NONE  # no letters
    assert langid.identify("\ufffd\ufffd\x07")[0] == langid.NONE  # what undecodable bytes leave
    assert langid.script_share("男孩abc", "zh") == (0.4, 5)
    assert langid.script_share("Привет, world", "ru") == (6 / 11, 11)
    assert langid.script_share("少年は", "zh")[0] == pytest.approx(2 / 3)  # Han: zh cannot tell ja apart
    assert langid.script_share("42", "th") == (0.0, 0)


def test_missing_identifier_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(langid, "available", lambda: False)
    with pytest.raises(LnaError, match=r"pip install 'lna\[steer\]'"):
        langid.check()


# -- the Python API --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_model(tiny_models):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_models["llama"], dtype=torch.float32,
                                                attn_implementation="sdpa").eval()


def _greedy(model, prompt=(1, 40, 41, 42), n=12):
    return model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=n, pad_token_id=2)[0].tolist()


def test_api_empty_intervention_is_plain_generation_and_restores(hf_model):
    import lna

    plain = _greedy(hf_model)
    mlps = [layer.mlp for layer in hf_model.model.layers]
    with lna.steer(hf_model, zero={}, set={}) as iv:
        assert iv.empty and _greedy(hf_model) == plain
    assert [layer.mlp for layer in hf_model.model.layers] == mlps


def test_api_intervention_equals_hooked_reference_and_restores_on_error(hf_model):
    import lna

    layers, width = len(hf_model.model.layers), hf_model.config.intermediate_size
    rng = np.random.default_rng(4)
    zero = {0: rng.choice(width, 20, replace=False)}
    chosen = rng.choice(width, 15, replace=False)
    setv = {1: (chosen, rng.normal(0, 3, 15))}
    plain = _greedy(hf_model)
    with lna.steer(hf_model, zero=zero, set=setv) as iv:
        steered = _greedy(hf_model)
    hooks = naive.intervene(hf_model, iv.mask, iv.values)
    try:
        assert steered == _greedy(hf_model) != plain
    finally:
        for h in hooks:
            h.remove()
    mlps = [layer.mlp for layer in hf_model.model.layers]
    with pytest.raises(RuntimeError):
        with lna.steer(hf_model, zero=zero):
            raise RuntimeError("user code failed")
    assert [layer.mlp for layer in hf_model.model.layers] == mlps and _greedy(hf_model) == plain
    with pytest.raises(LnaError, match="outside the model's layers"):
        with lna.steer(hf_model, zero={layers: [0]}):
            pass


# -- the command --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("steer")
    path = root / "d.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in DATA), encoding="utf-8")
    model = tiny_models["llama"]
    assert cli.run(cli._commands()["profile"], "lna-profile",
                   ["-q", "--model", model, "--dataset", str(path), "--out", str(root / "s.zarr")]) == 0
    assert cli.run(cli._commands()["identify"], "lna-identify",
                   [str(root / "s.zarr"), "-o", str(root / "n.json"), "--top-rate", "0.1"]) == 0
    return {"root": root, "data": path, "model": model, "store": root / "s.zarr", "neurons": root / "n.json"}


def steer_cli(made, out, *extra):
    argv = ["-q", "--model", made["model"], "--neurons", made["neurons"], "--store", made["store"], "--from", "en",
            "--to", "ja", "--dataset", made["data"], "--strengths", "1,8", "--layers", "all,0-1",
            "--max-new-tokens", "8", "-o", out, *extra]
    with pytest.raises(SystemExit) as done:
        cli.steer_main([str(a) for a in argv])
    return done.value.code


@pytest.fixture(scope="module")
def result(made):
    out = made["root"] / "run"
    assert steer_cli(made, out) == 0
    return out, json.loads((out / "steer.json").read_text(encoding="utf-8"))


def test_command_outputs_equal_the_runner_and_shares_recompute(made, result):
    from lna.core import config
    from lna.runners.hf import HFRunner

    out, res = result
    assert [r["row"] for r in res["rows"]] == ["baseline", "all/off", "all/x1", "all/x8", "0-1/off", "0-1/x1",
                                               "0-1/x8"]
    assert sorted(p.name for p in out.iterdir()) == ["nll.npz", "outputs.jsonl", "run.json", "steer.csv",
                                                     "steer.json", "steer.md", "steer.png"]
    kept = {}
    for line in (out / "outputs.jsonl").read_text().splitlines():
        rec = json.loads(line)
        kept[rec["key"]] = rec["tokens"]
    runner = HFRunner(made["model"])
    _, questions = data.load(str(made["data"]), "en")
    _, template = config.template_for(made["model"], None, runner.tokenizer)
    prompts = [responses.encode(runner.tokenizer, q.render(template)) for q in questions]
    plain = runner.generate(prompts, n=1, temperature=0, top_p=1, max_new_tokens=8, seed=0)
    assert [kept[f"baseline|{q.key}"] for q in questions] == [g for (g,) in plain]
    ns, st = neuron_file.load(made["neurons"]), open_store(made["store"])
    iv = intervene.steering(ns, st, "en", "ja", 8.0)
    steered = runner.generate(prompts, n=1, temperature=0, top_p=1, max_new_tokens=8, seed=0,
                              masks=iv.mask[None], values=iv.values[None], mask_ids=[0] * len(prompts))
    assert [kept[f"all/x8|{q.key}"] for q in questions] == [g for (g,) in steered]
    records = {json.loads(line)["key"]: json.loads(line) for line in (out / "outputs.jsonl").read_text().splitlines()}
    for row in res["rows"]:  # the shares, recomputed from the outputs with py3langid itself
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        texts = [runner.tokenizer.decode(kept[f"{row['row']}|{q.key}"], skip_special_tokens=True) for q in questions]
        cleaned = [__import__("regex").sub(r"[\p{C}\uFFFD]+", " ", t) for t in texts]
        probs = [{} for _ in cleaned]
        for p, t in zip(probs, cleaned):
            for lab, pr in ident.rank(t) if __import__("regex").search(r"\p{L}", t) else []:
                p["zh" if lab in ("wuu", "yue") else lab] = p.get("zh" if lab in ("wuu", "yue") else lab, 0) + pr
        top = [max(p.items(), key=lambda kv: kv[1]) if p else ("none", 0.0) for p in probs]
        # issue 23: share_label_target is what share_target was (the top label); share_target,
        # share_none now apply the probability threshold (and "mixed" the sentences' agreement)
        assert row["share_label_target"] == np.mean([lab == "ja" for lab, _ in top])
        assert row["share_none"] >= np.mean([lab == "none" or pr < 0.5 for lab, pr in top])
        assert row["outputs"] == len(questions)
        mine = [records[f"{row['row']}|{q.key}"] for q in questions]
        assert [m["text"] for m in mine] == texts and [m["tokens"] for m in mine] == [kept[m["key"]] for m in mine]
        assert [m["language"]["label"] for m in mine] == [lab for lab, _ in top]
        assert [m["language"]["prob"] for m in mine] == pytest.approx([pr for _, pr in top], abs=1e-9)
        for key, share in (("share_fluent_target", "fluent_target"), ("share_implausible", "ppl_ok")):
            flags = [m[share] for m in mine]
            assert row[key] == np.mean(flags if share == "fluent_target" else [not f for f in flags])


def test_command_perplexities_equal_the_runner(made, result):
    from lna.runners.hf import HFRunner

    out, res = result
    runner = HFRunner(made["model"])
    refs = responses.samples(responses.tokenized(data.load(str(made["data"]), "en,ja")[1], runner.tokenizer,
                                                 config.template_for(
                                                     made["model"], None, runner.tokenizer)[1]))
    ns, st = neuron_file.load(made["neurons"]), open_store(made["store"])
    iv = intervene.steering(ns, st, "en", "ja", 1.0, [0, 1])
    for name, mask_ids, values in (("baseline", [-1] * len(refs), None), ("0-1/x1", [0] * len(refs), iv.values[None])):
        nll = runner.nll(refs, iv.mask[None], mask_ids, values)
        row = next(r for r in res["rows"] if r["row"] == name)
        for lang, key in (("en", "ppl_source"), ("ja", "ppl_target")):
            pick = np.array([s.lang == lang for s in refs])
            want = np.exp(nll[pick].sum() / sum(len(s.response) for s, p in zip(refs, pick) if p))
            assert row[key] == pytest.approx(want, rel=1e-9)
    # the tiny model's sets: en's neurons in layer 2 only, ja's in layers 0-2
    assert res["rows"][2]["neurons_set"] > 0 and res["rows"][1]["neurons_set"] == 0 < res["rows"][1]["neurons_zeroed"]
    assert res["rows"][4]["neurons_zeroed"] == 0 and res["rows"][5]["neurons_set"] > 0
    assert res["rows"][4]["ppl_source"] == res["rows"][0]["ppl_source"]  # an empty intervention is the baseline


def test_rerun_resumes_and_an_interrupted_run_gives_the_same_table(made, result, monkeypatch):
    from lna.interventions.steer import session as steering
    from lna.runners.hf import HFRunner

    out, res = result
    assert steer_cli(made, out) == 0  # everything done: nothing recomputed, same table
    assert json.loads((out / "steer.json").read_text()) == res
    monkeypatch.setattr(steering, "BATCH", 4)
    resume = interrupt_after(monkeypatch, HFRunner, "generate", after=2)
    cut = made["root"] / "cut"
    assert steer_cli(made, cut) == 130
    assert len((cut / "outputs.jsonl").read_text().splitlines()) == 8 and not (cut / "steer.json").exists()
    resume()
    assert steer_cli(made, cut) == 0
    again = json.loads((cut / "steer.json").read_text())
    assert again["rows"] == res["rows"]


def test_command_refusals_are_one_line(made, tmp_path, capsys):
    out = made["root"] / "run"
    # another setting into a folder holding a run
    assert steer_cli(made, out, "--value", "active-mean", "--strengths", "2") == 1
    assert "holds lna-steer outputs of another run" in capsys.readouterr().err
    no_sums = tmp_path / "plain.zarr"
    assert cli.run(cli._commands()["profile"], "lna-profile",
                   ["-q", "--model", made["model"], "--dataset", str(made["data"]), "--out", str(no_sums),
                    "--no-sums"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        cli.steer_main(["--model", made["model"], "--neurons", str(made["neurons"]), "--store", str(no_sums),
                        "--from", "en", "--to", "zh", "--dataset", str(made["data"]), "-o", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert done.value.code == 1 and err.count("\n") == 1 and "no activation sums" in err and "--sums" in err
    for extra, words in ((["--to", "en"], "both en"), (["--layers", "0-9"], "outside the model's layers"),
                         (["--to", "th"], "no language 'th'")):
        assert steer_cli(made, tmp_path / "y", *extra) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
