"""lna-ablate against independent references: an unmodified transformers model in float64
(baseline), the same model with a hook zeroing SiLU(gate) (deactivation), one setting at a
time (batching), and the command's files, resume and bad-input paths."""
import json

import numpy as np
import pytest
import torch

import naive
from conftest import SMALL_DATA as DATA, one_line_error, random_samples, write_jsonl
from lna.interventions import ablate, masked_nll
from lna.identification import neurons
from lna.inputs import responses
from lna.cli import run
from lna.cli.ablate import ablate as ablate_command
from lna.identification.neurons import NeuronSets
from lna.runners.hf import HFRunner

LANGS = ["en", "zh", "ja"]
LAYERS, WIDTH = 3, 96  # the tiny_models fixture


def layer_lists(per_layer: dict) -> list:
    return [np.array(sorted(per_layer.get(i, [])), np.int64) for i in range(LAYERS)]


def neuron_sets(model: str, layers=LAYERS, width=WIDTH) -> NeuronSets:
    """en: specific only (its two settings share a mask); zh: specific and related;
    ja: related only (its specific set is empty: the baseline)."""
    shared = {1: range(60, 72)}
    sets = {
        "en": layer_lists({0: range(0, 30), 2: range(30, 40)}),
        "zh": layer_lists({0: range(40, 60), 1: list(range(0, 20)) + list(range(60, 72))}),
        "ja": layer_lists(shared),
    }
    general = [np.array([90, 91], np.int64)] * layers
    if layers != LAYERS:
        sets = {k: [v[0]] * layers for k, v in sets.items()}
    return NeuronSets("ternary", 0.01, 0.1, 0.5, LANGS, layers, width, sets, general, {"model": model})


def settings_of(ns):
    return {"specific": ns.split("specific"), "specific+related": ns.sets}


def hook_reference(path, samples, settings, dtype) -> dict:
    """Per-sample NLL sums {(setting, lang) or "baseline": float [n_samples]} from an
    unmodified model, one sample at a time, SiLU(gate) of the set zeroed by a hook."""
    rows = {"baseline": np.zeros((LAYERS, WIDTH), bool)}
    for name, sets in settings.items():
        for lang, per_layer in sets.items():
            mask = np.zeros((LAYERS, WIDTH), bool)
            for layer, idx in enumerate(per_layer):
                mask[layer, idx] = True
            rows[name, lang] = mask
    distinct = {}  # identical masks once: the reference is slow (float64, one sequence a call)
    for key, mask in rows.items():
        distinct.setdefault(mask.tobytes(), (len(distinct), mask))
    masks = np.stack([m for _, m in distinct.values()])
    ids = [m for m in range(len(masks)) for _ in samples]
    nll = naive.nll(path, samples * len(masks), masks, ids, dtype).reshape(len(masks), len(samples))
    return {key: nll[distinct[mask.tobytes()][0]] for key, mask in rows.items()}


def log_ppl(nll_of_samples, samples, targets):
    """Token-weighted mean NLL of each target language's responses."""
    return np.array([sum(n for n, s in zip(nll_of_samples, samples) if s.lang == t)
                     / sum(len(s.response) for s in samples if s.lang == t) for t in targets])


@pytest.fixture(scope="module")
def model(tiny_models):
    return tiny_models["llama"]


@pytest.fixture(scope="module")
def runner(model):
    # Small budgets: several batches, split groups, rows of different settings side by side.
    return HFRunner(model, token_budget=160, max_row_tokens=90)


@pytest.fixture(scope="module")
def samples():
    return random_samples(11, LANGS, questions=6)


@pytest.fixture(scope="module")
def reference(model, samples):
    settings = settings_of(neuron_sets(model))
    return {dtype: hook_reference(model, samples, settings, dtype) for dtype in (torch.float64, torch.float32)}


@pytest.fixture(scope="module")
def result(runner, model, samples):
    ns = neuron_sets(model)
    return ablate.ablate(runner, samples, settings_of(ns))


def test_matrix_equals_float64_and_hook_references(result, reference, samples):
    """Baseline row vs an unmodified model in float64; deactivated rows vs a hook zeroing
    SiLU(gate); both within the dtype rule (<= 2x plain transformers' fp32 error)."""
    ref64, ref32 = reference[torch.float64], reference[torch.float32]
    assert result["languages"] == LANGS
    for name, s in result["settings"].items():
        assert s["rows"] == ["baseline", *LANGS]
        keys = ["baseline"] + [(name, lang) for lang in LANGS]
        want64 = np.stack([log_ppl(ref64[k], samples, LANGS) for k in keys])
        want32 = np.stack([log_ppl(ref32[k], samples, LANGS) for k in keys])
        got = np.log(np.array(s["ppl"]))
        bound = 2 * np.abs(want32 - want64).max() + 1e-9
        assert np.abs(got - want64).max() <= bound, (name, np.abs(got - want64).max(), bound)
        assert np.allclose(np.array(s["change"]), np.exp(want64) - np.exp(want64[0]), atol=1e-3)
    # the deactivations do something measurable (far above the tolerance), else the test proves little
    spec = np.log(np.array(result["settings"]["specific"]["ppl"]))
    assert np.abs(spec[1] - spec[0]).min() > 1e3 * bound


def test_empty_set_changes_nothing_exactly(result, runner, samples):
    # ja has no specific neuron: its row is the baseline, bit for bit
    spec = result["settings"]["specific"]
    assert spec["rows"][3] == "ja" and spec["change"][3] == [0.0] * len(LANGS)
    # and through the masked kernel: an all-False mask equals no mask exactly
    none = runner.nll(samples, None, [-1] * len(samples))
    empty = runner.nll(samples, np.zeros((1, LAYERS, WIDTH), bool), [0] * len(samples))
    assert np.array_equal(none, empty)


def test_identical_masks_are_computed_once(model):
    p = ablate.plan(settings_of(neuron_sets(model)), LAYERS, WIDTH)
    # en's two settings share one mask, ja's empty specific set is the baseline
    assert p.ids["specific"]["en"] == p.ids["specific+related"]["en"]
    assert p.ids["specific"]["ja"] == -1
    assert len(p.masks) == 4 and p.n_forward == 5


def test_batched_settings_equal_one_by_one(runner, model, samples, reference):
    """All settings in one call vs one call per setting. Not bit-identical: batching other
    settings' rows beside a sample changes the padded shapes of the attention and matmul
    reductions (fp32 rounding), so the two agree within the dtype rule, not exactly."""
    p = ablate.plan(settings_of(neuron_sets(model)), LAYERS, WIDTH)
    together = masked_nll.evaluate(runner, samples, p.masks)
    alone = np.stack([runner.nll(samples, None, [-1] * len(samples))]
                     + [runner.nll(samples, p.masks[m:m + 1], [0] * len(samples)) for m in range(len(p.masks))])
    row_of = {m: key for key in reference[torch.float64] if key != "baseline"
              for m in [p.ids[key[0]][key[1]]] if m >= 0}
    keys = ["baseline"] + [row_of[m] for m in range(len(p.masks))]
    ref64 = np.stack([reference[torch.float64][k] for k in keys])
    ref32 = np.stack([reference[torch.float32][k] for k in keys])
    bound = 2 * np.abs(ref32 - ref64).max() + 1e-9
    assert np.abs(together - alone).max() <= bound
    assert np.abs(together - ref64).max() <= bound and np.abs(alone - ref64).max() <= bound


# -- the command ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory, model, runner):
    """A responses file with token ids (as lna-profile writes it) and a neuron-set file."""
    from lna.core import config
    from lna.inputs import data

    root = tmp_path_factory.mktemp("ablate")
    dataset = str(write_jsonl(root / "d.jsonl", DATA))
    _, qs = data.load(dataset)
    resp = root / "s.responses.jsonl"
    responses.prepare(qs, runner.tokenizer, config.template_for(model)[1], resp)
    ns = neuron_sets(model)
    ns.source["store"] = str(root / "s.zarr")  # lna-ablate finds the responses beside it
    neurons.save(ns, root / "neurons.json")
    return {"root": root, "dataset": dataset, "responses": str(resp), "neurons": str(root / "neurons.json")}


def ablate_cli(*args):
    return run(ablate_command, "lna-ablate", ["-q", *[str(a) for a in args]])


def test_command_writes_matrices_csv_and_heatmaps(files, model, runner, tmp_path):
    out = tmp_path / "out"
    # no --responses: the file beside the neurons' store is used
    assert ablate_cli("--model", model, "--neurons", files["neurons"], "-o", out) == 0
    got = json.loads((out / "ppl.json").read_text())
    assert got["languages"] == LANGS and list(got["settings"]) == ["specific", "specific+related"]
    for name, s in got["settings"].items():
        ppl, change = np.array(s["ppl"]), np.array(s["change"])
        assert s["rows"] == ["baseline", *LANGS] and ppl.shape == (4, 3) and (ppl > 1).all()
        assert np.array_equal(change, ppl - ppl[0])
        for kind, values in (("ppl", ppl), ("change", change)):
            lines = (out / f"{kind}-{name}.csv").read_text().splitlines()
            assert lines[0] == "deactivated,en,zh,ja"
            assert [ln.split(",")[0] for ln in lines[1:]] == s["rows"]
            assert np.array_equal(np.array([[float(x) for x in ln.split(",")[1:]] for ln in lines[1:]]), values)
        assert (out / f"change-{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the numbers are those of the in-memory function on the same samples
    from lna.inputs import data

    samples = responses.samples(data.load(files["responses"])[1])
    direct = ablate.ablate(runner, samples, settings_of(neurons.load(files["neurons"])))
    for name in direct["settings"]:
        assert np.allclose(direct["settings"][name]["ppl"], got["settings"][name]["ppl"], rtol=1e-5)
    with np.load(out / "nll.npz") as z:
        assert not np.isnan(z["nll"]).any() and z["nll"].shape == (5, len(samples))
    assert got["tokens"] == {t: sum(len(s.response) for s in samples if s.lang == t) for t in LANGS}


def test_custom_setting_file_and_langs(files, model, tmp_path):
    """--setting FILE in the released layout {lang: [[layer 0], ...]}, and --langs."""
    released = tmp_path / "released-mask.json"
    released.write_text(json.dumps({lang: [a.tolist() for a in v] for lang, v in neuron_sets(model).sets.items()}))
    out = tmp_path / "custom"
    assert ablate_cli("--model", model, "--neurons", files["neurons"], "--responses", files["responses"],
                      "--setting", released, "--setting", "specific+related", "--langs", "zh,ja", "-o", out) == 0
    got = json.loads((out / "ppl.json").read_text())
    assert got["languages"] == ["zh", "ja"] and list(got["settings"]) == ["released-mask", "specific+related"]
    a, b = got["settings"]["released-mask"], got["settings"]["specific+related"]
    assert a["rows"] == ["baseline", "zh", "ja"] and a["ppl"] == b["ppl"]  # the same sets: the same masks


@pytest.mark.parametrize("every", ["0", "3600"])  # saved at every chunk / only when interrupted
def test_resume_after_interruption_equals_uninterrupted(files, model, tmp_path, monkeypatch, every):
    args = ["--model", model, "--neurons", files["neurons"], "--responses", files["responses"],
            "--token-budget", "64", "--checkpoint-every", every]
    whole = tmp_path / "whole"
    assert ablate_cli(*args, "-o", whole) == 0

    real, seen = HFRunner.nll, []

    def dying(self, samples, masks, mask_ids):  # killed during the third chunk
        if len(seen) == 2:
            raise KeyboardInterrupt
        seen.append(len(samples))
        return real(self, samples, masks, mask_ids)

    monkeypatch.setattr(HFRunner, "nll", dying)
    cut = tmp_path / "cut"
    assert ablate_cli(*args, "-o", cut) == 130
    assert not (cut / "ppl.json").exists()
    with np.load(cut / "nll.npz") as z:
        missing = np.isnan(z["nll"])  # [forward setting, sample]: cells not yet computed
    assert 0 < missing.sum() < missing.size

    def counting(self, samples, masks, mask_ids):
        seen.append(len(samples))
        return real(self, samples, masks, mask_ids)

    seen.clear()
    monkeypatch.setattr(HFRunner, "nll", counting)
    assert ablate_cli(*args, "-o", cut) == 0
    assert sum(seen) == missing.sum()  # only what was missing, once
    assert json.loads((cut / "ppl.json").read_text()) == json.loads((whole / "ppl.json").read_text())
    seen.clear()
    assert ablate_cli(*args, "-o", cut) == 0 and seen == []  # a finished run recomputes nothing


def bad_neurons(files, kind):
    path = files["root"] / f"bad-{kind}.json"
    ns = neuron_sets("org/another-model") if kind == "model" else neuron_sets(None, layers=5)
    ns.source = {k: v for k, v in ns.source.items() if v}
    neurons.save(ns, path)
    return str(path)


@pytest.mark.parametrize("change,expect", [
    ({"--neurons": "shape"}, "neuron sets of 5 layers x 96 neurons"),
    ({"--neurons": "model"}, "neuron sets of org/another-model"),
    ({"--neurons": "/no/such/neurons.json"}, "no such neuron-set file"),
    ({"--responses": "/no/such/responses.jsonl"}, "no such file"),
    ({"--model": "/no/such/model"}, "no such folder"),
    ({"--langs": "xx"}, "unknown language"),
    ({"--langs": "th"}, "the data has no th"),
    ({"--responses": None, "--dataset": "questions-only"}, "no responses for en"),
    ({"--dataset": "d.jsonl"}, "not both"),
    ({"--setting": "bogus"}, "use specific, specific+related or a neuron-set JSON file"),
    ({"-o": "a-file"}, "not a folder"),
    ({"--limit": "0"}, "not in the range x>=1"),
])
def test_bad_input_is_one_line_and_writes_nothing(files, model, tmp_path, capsys, change, expect):
    args = {"--model": model, "--neurons": files["neurons"], "--responses": files["responses"],
            "-o": str(tmp_path / "out")}
    for k, v in change.items():
        if v in ("shape", "model"):
            v = bad_neurons(files, v)
        elif v == "questions-only":
            v = str(write_jsonl(tmp_path / "q.jsonl", [{"lang": "en", "prompt": "Q: 1+1?\nA:"}]))
        elif v == "d.jsonl":
            v = files["dataset"]
        elif v == "a-file":
            v = str(tmp_path / "a-file")
            (tmp_path / "a-file").write_text("keep me")
        args[k] = v
    code = ablate_cli(*[x for kv in args.items() if kv[1] is not None for x in kv])
    assert expect in one_line_error(capsys, code)
    assert not (tmp_path / "out").exists()


def test_no_responses_anywhere_is_one_line(files, model, tmp_path, capsys):
    ns = neuron_sets(model)  # no source store, no --responses, no --dataset
    neurons.save(ns, tmp_path / "n.json")
    code = ablate_cli("--model", model, "--neurons", tmp_path / "n.json", "-o", tmp_path / "out")
    assert "give --responses FILE" in one_line_error(capsys, code)
    assert not (tmp_path / "out").exists()


def test_released_sets_on_a_model_of_another_shape(shared_data, files, model, tmp_path, capsys):
    """The study's sets (identified from the released 7B counts) against the tiny model."""
    from lna.identification.identify import identify_store
    from lna.storage.import_counts import import_counts

    npz = shared_data / "reference" / "mistralmathoctopus7b-mgsm-counts.npz"
    neurons.save(identify_store(import_counts([npz])), tmp_path / "released.json")
    code = ablate_cli("--model", model, "--neurons", tmp_path / "released.json", "--responses", files["responses"],
                      "-o", tmp_path / "out")
    err = one_line_error(capsys, code)
    assert "neuron sets of 32 layers x 14336 neurons" in err and "3 x 96" in err and "MistralMathOctopus" in err
    assert not (tmp_path / "out").exists()


def test_released_mask_as_setting_on_a_model_of_another_shape(shared_data, files, model, tmp_path, capsys):
    mask = shared_data / "reference" / "mistralmathoctopus7b-mgsm-mask-0.01-0.109375.json"
    code = ablate_cli("--model", model, "--neurons", files["neurons"], "--responses", files["responses"],
                      "--setting", mask, "-o", tmp_path / "out")
    assert "sets of 32 layers with neuron indices up to 14335" in one_line_error(capsys, code)
    assert not (tmp_path / "out").exists()
