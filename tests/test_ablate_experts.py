"""lna-ablate on mixture-of-experts models with `lna experts` sets (lna.interventions.expert_ablate),
against an independent reference: an unmodified transformers model in float64, one sample at
a time, whose activation functions are hooked to zero the set's expert neurons, always-on
neurons or whole experts (tests/naive_moe.py); on Mixtral (top-2 of 8, no always-on MLP) and
Qwen2-MoE (with its shared expert). Then resume, and the one-line refusals."""
import json
from collections import Counter

import numpy as np
import pytest
import torch

import naive_moe
from conftest import SMALL_DATA as DATA, one_line_error, write_jsonl
from lna.cli import run
from lna.cli.ablate import ablate as ablate_command
from lna.identification.experts import ExpertNeuronSets
from lna.inputs import data, responses
from lna.models.tiny import build_tiny
from lna.runners.moe import ExpertMasks, MoERunner

LANGS = ["en", "zh", "ja"]
ARCHS = ["mixtral", "qwen2_moe"]


def ablate_cli(*args):
    return run(ablate_command, "lna-ablate", ["-q", *[str(a) for a in args]])


def shape_of(runner) -> dict:
    lay = runner.layout
    return {"layers": runner.layers, "experts": lay.experts, "expert_neurons": lay.expert_neurons,
            "always_on": list(lay.always_on)}


def planted(runner):
    """en: neurons of two experts (and of an always-on MLP where the model has one); zh:
    overlapping en's (related) and its own; ja: only neurons en and zh list too (its
    specific set is empty: the baseline). Language experts: two of en, one of zh, none of ja."""
    shared = [[1, -1, j] for j in range(10)] if runner.layout.always_on[1] else []
    neurons = {"en": [[0, 1, j] for j in range(20)] + [[2, 3, j] for j in range(5, 16)] + shared,
               "zh": [[0, 1, j] for j in range(10, 30)] + [[1, 6, j] for j in range(31)],
               "ja": [[0, 1, j] for j in range(15, 20)]}
    experts = {"en": [[1, 2], [2, 0]], "zh": [[0, 5]], "ja": []}
    return neurons, experts


def write_sets(folder, runner, model, store, neurons, experts, shape=None):
    """expert_neurons.json (through ExpertNeuronSets, as `lna experts` writes it) and
    language_experts.json, in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    source = {"model": model, "store": str(store), "shape": shape_of(runner) if shape is None else shape}
    if shape is False:  # a file without a recorded shape: indices are checked one by one
        del source["shape"]
    sets = {lang: np.array(v, np.int64).reshape(-1, 3) for lang, v in neurons.items()}
    ns = ExpertNeuronSets("ternary", LANGS, 0.1, 0.5, 0.01, 1, sets, [], source)
    (folder / "expert_neurons.json").write_text(json.dumps(ns.to_json()))
    if experts is not None:
        (folder / "language_experts.json").write_text(json.dumps(
            {"format": "lna-language-experts/1", "languages": LANGS, "experts": experts, "source": source}))
    return folder


def reference_masks(runner, neurons, experts) -> dict:
    """{(setting, lang): (always-on bool [layer, widest], experts bool [layer, expert, neuron])},
    straight from the lists: specific = listed by that language only."""
    lay, L = runner.layout, runner.layers
    listed = Counter(tuple(t) for v in neurons.values() for t in {tuple(t) for t in v})
    out = {}
    for setting in ("specific", "specific+related", "experts"):
        for lang in LANGS:
            always = np.zeros((L, lay.neurons), bool)
            routed = np.zeros((L, lay.experts, lay.expert_neurons), bool)
            if setting == "experts":
                for layer, e in experts[lang]:
                    routed[layer, e, :] = True
            else:
                for layer, e, j in neurons[lang]:
                    if setting == "specific" and listed[(layer, e, j)] > 1:
                        continue
                    if e == -1:
                        always[layer, j] = True
                    else:
                        routed[layer, e, j] = True
            out[setting, lang] = (always, routed)
    return out


def reference_log_ppl(path, samples, masks: dict, dtype) -> dict:
    """{key or "baseline": log PPL per target language} through the hooked model."""
    rows = {"baseline": None, **masks}
    distinct = {}
    for key, m in rows.items():
        if m is not None and (m[0].any() or m[1].any()):
            distinct.setdefault(m[0].tobytes() + m[1].tobytes(), (len(distinct), m))
    table = ExpertMasks(np.stack([m[0] for _, m in distinct.values()]), np.stack([m[1] for _, m in distinct.values()]))
    n = len(distinct)
    ids = [-1] * len(samples) + [m for m in range(n) for _ in samples]
    nll = naive_moe.nll_intervened(path, samples * (n + 1), table, ids, dtype=dtype).reshape(n + 1, len(samples))
    tokens = np.array([len(s.response) for s in samples], np.float64)

    def log_ppl(row):
        return np.array([row[[s.lang == t for s in samples]].sum() / tokens[[s.lang == t for s in samples]].sum()
                         for t in LANGS])

    out = {}
    for key, m in rows.items():
        hit = m is not None and (m[0].any() or m[1].any())
        out[key] = log_ppl(nll[1 + distinct[m[0].tobytes() + m[1].tobytes()][0]] if hit else nll[0])
    return out


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """cases(arch): a tiny MoE model, its responses file (as lna-profile writes it beside its
    store) and planted sets, built once per family."""
    made = {}

    def get(arch):
        if arch not in made:
            made[arch] = make_case(arch, tmp_path_factory.mktemp(f"ablate-{arch}"))
        return made[arch]
    return get


@pytest.fixture(scope="module", params=ARCHS)
def case(request, cases):
    return cases(request.param)


def make_case(arch, root):
    from lna.core import config

    model = str(build_tiny(root / arch, arch, hidden=64, layers=3, intermediate=96, heads=2, kv_heads=1,
                           seed=ARCHS.index(arch)))
    runner = MoERunner(model)
    _, qs = data.load(str(write_jsonl(root / "d.jsonl", DATA)))
    resp = root / "s.responses.jsonl"
    responses.prepare(qs, runner.tokenizer, config.template_for(model)[1], resp)
    neurons, experts = planted(runner)
    folder = write_sets(root / "experts", runner, model, root / "s.zarr", neurons, experts)
    samples = responses.samples(data.load(str(resp))[1])
    return {"arch": arch, "root": root, "model": model, "runner": runner, "responses": str(resp), "sets": folder,
            "neurons": neurons, "experts": experts, "samples": samples}


@pytest.fixture(scope="module")
def ablated(case):
    out = case["root"] / "out"
    # --neurons: the folder `lna experts` writes; responses found beside the recorded store
    assert ablate_cli("--model", case["model"], "--neurons", case["sets"], "--setting", "specific",
                      "--setting", "specific+related", "--setting", "experts", "--token-budget", "64", "-o", out) == 0
    return out


def test_ppl_equals_hooked_float64_reference(case, ablated):
    got = json.loads((ablated / "ppl.json").read_text())
    assert got["languages"] == LANGS and list(got["settings"]) == ["specific", "specific+related", "experts"]
    masks = reference_masks(case["runner"], case["neurons"], case["experts"])
    ref = {dtype: reference_log_ppl(case["model"], case["samples"], masks, dtype)
           for dtype in (torch.float64, torch.float32)}
    bound = 2 * max(np.abs(ref[torch.float32][k] - ref[torch.float64][k]).max() for k in ref[torch.float64]) + 1e-9
    for name, s in got["settings"].items():
        assert s["rows"] == ["baseline", *LANGS]
        want = np.stack([ref[torch.float64]["baseline"]] + [ref[torch.float64][name, lang] for lang in LANGS])
        err = np.abs(np.log(np.array(s["ppl"])) - want).max()
        assert err <= bound, (case["arch"], name, err, bound)
        assert np.array_equal(np.array(s["change"]), np.array(s["ppl"]) - np.array(s["ppl"])[0])
    # the planted deactivations move the PPL far beyond the tolerance; ja's empty sets (its
    # specific neurons, its experts) are the baseline itself
    for name in got["settings"]:
        ppl = np.log(np.array(got["settings"][name]["ppl"]))
        assert np.abs(ppl[1:3] - ppl[0]).max(axis=1).min() > 1e3 * bound, name
        assert np.array_equal(ppl[3], ppl[0]) == (name != "specific+related"), name
    sizes = got["deactivated"]
    for (name, lang), (always, routed) in masks.items():
        assert sizes[name][lang] == always.sum() + routed.sum()
    assert got["deactivated_experts"]["experts"] == {"en": 2, "zh": 1, "ja": 0}
    assert got["tokens"] == {t: sum(len(s.response) for s in case["samples"] if s.lang == t) for t in LANGS}
    for name in got["settings"]:
        assert (ablated / f"change-{name}.png").is_file() and (ablated / f"ppl-{name}.csv").is_file()


def test_resume_after_interruption_is_bit_identical(case, ablated, tmp_path, monkeypatch):
    args = ["--model", case["model"], "--neurons", case["sets"] / "expert_neurons.json", "--responses",
            case["responses"], "--setting", "specific", "--setting", "specific+related", "--setting", "experts",
            "--token-budget", "64", "--checkpoint-every", "3600"]
    real, seen = MoERunner.nll, []

    def dying(self, samples, masks, mask_ids, values=None):  # killed during the third chunk
        if len(seen) == 2:
            raise KeyboardInterrupt
        seen.append(len(samples))
        return real(self, samples, masks, mask_ids, values)

    monkeypatch.setattr(MoERunner, "nll", dying)
    cut = tmp_path / "cut"
    assert ablate_cli(*args, "-o", cut) == 130
    assert not (cut / "ppl.json").exists()
    with np.load(cut / "nll.npz") as z:
        missing = np.isnan(z["nll"])
        rows = z["rows"].tolist()
    assert 0 < missing.sum() < missing.size and rows[0] == "baseline" and "experts/en" in ",".join(rows)

    def counting(self, samples, masks, mask_ids, values=None):
        seen.append(len(samples))
        return real(self, samples, masks, mask_ids, values)

    seen.clear()
    monkeypatch.setattr(MoERunner, "nll", counting)
    assert ablate_cli(*args, "-o", cut) == 0
    assert sum(seen) == missing.sum()  # only what was missing, once
    want, again = json.loads((ablated / "ppl.json").read_text()), json.loads((cut / "ppl.json").read_text())
    assert again["settings"] == want["settings"]  # bit-identical numbers
    seen.clear()
    assert ablate_cli(*args, "-o", cut) == 0 and seen == []
    # other sets in the same folder: refused, nothing overwritten
    neurons = {k: v[:-1] for k, v in case["neurons"].items()}
    other = write_sets(tmp_path / "other", case["runner"], case["model"], case["root"] / "s.zarr", neurons,
                       case["experts"])
    code = ablate_cli(*[other if a == args[3] else a for a in args], "-o", cut)
    assert code != 0 and json.loads((cut / "ppl.json").read_text()) == again


def test_sets_from_lna_experts_end_to_end(tmp_path, cases):
    """lna-profile, `lna experts`, then lna-ablate on its folder (Mixtral): the command takes
    what `lna experts` writes, and its rows are the hooked reference's."""
    case = cases("mixtral")
    from lna.cli.experts import experts
    from lna.cli.profile import profile

    ds = write_jsonl(tmp_path / "d.jsonl", DATA)
    store = tmp_path / "s.zarr"
    assert run(profile, "lna-profile", ["-q", "--model", case["model"], "--dataset", str(ds), "--out", str(store)]) == 0
    res = tmp_path / "res"
    # a random model has no language neurons at the usual thresholds: these select some
    assert run(experts, "lna experts", [str(store), "-o", str(res), "--min-routed", "1", "--top-rate", "0.2",
                                        "--tau-quantile", "0.5"]) == 0
    saved = json.loads((res / "expert_neurons.json").read_text())
    routing = json.loads((res / "language_experts.json").read_text())
    assert saved["source"]["shape"] == shape_of(case["runner"]) and saved["source"]["store"] == str(store)
    assert all(saved["sets"][lang] for lang in LANGS) and any(routing["experts"].values())
    out = tmp_path / "out"
    assert ablate_cli("--model", case["model"], "--neurons", res, "--setting", "specific+related",
                      "--setting", "experts", "-o", out) == 0
    got = json.loads((out / "ppl.json").read_text())["settings"]
    masks = reference_masks(case["runner"], saved["sets"], routing["experts"])
    samples = responses.samples(data.load(str(tmp_path / "s.responses.jsonl"))[1])
    ref64 = reference_log_ppl(case["model"], samples, masks, torch.float64)
    ref32 = reference_log_ppl(case["model"], samples, masks, torch.float32)
    bound = 2 * max(np.abs(ref32[k] - ref64[k]).max() for k in ref64) + 1e-9
    for name in ("specific+related", "experts"):
        assert got[name]["rows"] == ["baseline", *LANGS]
        want = np.stack([ref64["baseline"]] + [ref64[name, lang] for lang in LANGS])
        assert np.abs(np.log(np.array(got[name]["ppl"])) - want).max() <= bound, name


@pytest.mark.parametrize("change,expect", [
    ("shape", "expert neuron sets of 5 layers x 8 experts"),
    ("index", "not in this model"),
    ("model", "org/another-moe"),
    ("no language experts", "no language_experts.json beside"),
    ("dense sets", "neuron sets of a dense model"),
    ("dense model", "is a dense model"),
    ("dense setting file", "a dense model's neuron sets do not apply"),
    ("bogus setting", "use specific, specific+related, experts"),
    ("experts as neurons", "give --neurons the expert_neurons.json beside it"),
    ("malformed", "must map each language to a list of (layer, expert, neuron)"),
])
def test_refusals_are_one_line_and_write_nothing(cases, tmp_path, capsys, tiny_models, change, expect):
    case = cases("qwen2_moe")  # refusals do not depend on the family
    runner, model, root = case["runner"], case["model"], case["root"]
    neurons, experts = case["neurons"], case["experts"]
    args = {"--model": model, "--neurons": case["sets"], "--responses": case["responses"]}
    settings = ["specific", "experts"]
    folder = tmp_path / "sets"
    if change == "shape":
        args["--neurons"] = write_sets(folder, runner, model, root, neurons, experts, {**shape_of(runner), "layers": 5})
    elif change == "index":
        bad = {**neurons, "en": neurons["en"] + [[2, 7, 500]]}
        args["--neurons"] = write_sets(folder, runner, model, root, bad, experts, shape=False)
    elif change == "model":
        args["--neurons"] = write_sets(folder, runner, "org/another-moe", root, neurons, experts)
    elif change == "no language experts":
        args["--neurons"] = write_sets(folder, runner, model, root, neurons, None)
    elif change == "dense sets":
        from test_ablate import neuron_sets
        from lna.identification import neurons as dense

        dense.save(neuron_sets(model), tmp_path / "dense.json")
        args["--neurons"] = tmp_path / "dense.json"
    elif change == "dense model":
        args["--model"] = tiny_models["llama"]
    elif change == "dense setting file":
        from test_ablate import neuron_sets
        from lna.identification import neurons as dense

        dense.save(neuron_sets(model), tmp_path / "dense.json")
        settings = [tmp_path / "dense.json"]
    elif change == "experts as neurons":
        args["--neurons"] = case["sets"] / "language_experts.json"
    elif change == "bogus setting":
        settings = ["bogus"]
    elif change == "malformed":
        args["--neurons"] = write_sets(folder, runner, model, root, neurons, experts)
        obj = json.loads((folder / "expert_neurons.json").read_text())
        obj["sets"]["en"] = [[0, 1]]
        (folder / "expert_neurons.json").write_text(json.dumps(obj))
    argv = [x for kv in args.items() for x in kv] + [x for s in settings for x in ("--setting", s)]
    code = ablate_cli(*argv, "-o", tmp_path / "out")
    assert expect in one_line_error(capsys, code)
    assert not (tmp_path / "out").exists()


def test_steer_refuses_mismatches_in_one_line(cases, tmp_path, capsys, tiny_models):
    """lna-steer: expert sets on a dense model, dense sets with a MoE store or model, and
    --value constant on a dense model: one line each, nothing written."""
    from conftest import profile_cli
    from test_ablate import neuron_sets
    from lna.cli.steer import steer
    from lna.identification import neurons as dense

    case = cases("mixtral")
    ds = write_jsonl(tmp_path / "d.jsonl", DATA)
    moe_store, dense_store = tmp_path / "moe.zarr", tmp_path / "dense.zarr"
    assert profile_cli("--model", case["model"], "--dataset", ds, "--out", moe_store) == 0
    assert profile_cli("--model", tiny_models["llama"], "--dataset", ds, "--out", dense_store) == 0
    dense.save(neuron_sets(tiny_models["llama"]), tmp_path / "dense.json")
    for model, sets, store, words in (
            (tiny_models["llama"], case["sets"], dense_store, "is a dense model"),
            (case["model"], tmp_path / "dense.json", moe_store, "a mixture-of-experts count store, but --neurons"),
            (case["model"], tmp_path / "dense.json", dense_store, f"{case['model']}: a mixture-of-experts model, but"),
            (tiny_models["llama"], tmp_path / "dense.json", dense_store, "--value constant is for mixture-of-experts")):
        value = ["--value", "constant"] if "constant" in words or sets == case["sets"] else []
        code = run(steer, "lna-steer", ["-q", "--model", model, "--neurons", str(sets), "--store", str(store),
                                        "--from", "en", "--to", "zh", "--dataset", str(ds), *value,
                                        "--allow-other-model", "-o", str(tmp_path / "out")])
        assert words in one_line_error(capsys, code)
        assert not (tmp_path / "out").exists()


# -- lna-steer on expert neurons ---------------------------------------------------------------
def reference_row(runner, neurons, source, target, strength, layers):
    """(masks, values) as single-row ExpertMasks, straight from the lists: source's neurons
    zeroed, then target's set to `strength` (a neuron of both is set), in `layers`."""
    lay, L = runner.layout, runner.layers
    masks = [np.zeros((L, lay.neurons), bool), np.zeros((L, lay.experts, lay.expert_neurons), bool)]
    values = [np.zeros(m.shape, np.float32) for m in masks]
    for lang, value in ((source, 0.0), (target, strength)):
        if value is None:
            continue
        for layer, e, j in neurons[lang]:
            if layer not in layers:
                continue
            where = (layer, j) if e == -1 else (layer, e, j)
            part = 0 if e == -1 else 1
            masks[part][where] = True
            values[part][where] = value
    return ExpertMasks(*masks), ExpertMasks(*values)


def test_steer_expert_neurons_equals_hooked_reference(cases, tmp_path):
    """lna-steer --value constant on Qwen2-MoE (expert and shared-expert neurons): every row's
    greedy outputs equal an unmodified model's with hooks setting the same activations, its
    perplexities the hooked float64 reference's; a rerun recomputes nothing."""
    import naive
    from lna.cli.steer import steer
    from lna.core import config

    case = cases("qwen2_moe")
    runner, model = case["runner"], case["model"]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Q: 2+3?\nQ: 7-4?\n", encoding="utf-8")
    out = tmp_path / "out"
    args = ["-q", "--model", model, "--neurons", str(case["sets"]), "--store", moe_store(case),
            "--from", "en", "--to", "zh", "--value", "constant", "--strengths", "0.5,3", "--layers", "all,1-2",
            "--prompts", str(prompts), "--responses", case["responses"], "--max-new-tokens", "6",
            "--token-budget", "64", "--allow-template-mismatch", "-o", str(out)]
    assert run(steer, "lna-steer", args) == 0
    got = json.loads((out / "steer.json").read_text())
    names = [r["row"] for r in got["rows"]]
    assert names == ["baseline", "all/off", "all/x0.5", "all/x3", "1-2/off", "1-2/x0.5", "1-2/x3"]
    outputs = {}
    for line in (out / "outputs.jsonl").read_text().splitlines():
        rec = json.loads(line)
        outputs[rec["key"]] = rec["tokens"]
    template = config.template_for(model, None, runner.tokenizer)[1]
    questions = [data.Question(f"prompts/{i}", "en", q) for i, q in enumerate(["Q: 2+3?", "Q: 7-4?"])]
    ids = [responses.encode(runner.tokenizer, q.render(template)) for q in questions]
    refs = responses.samples(data.load(case["responses"], "en,zh")[1])
    ref_lang = np.array([s.lang for s in refs])
    tokens = np.array([len(s.response) for s in refs], np.float64)
    net = naive.load(model)
    net.config._experts_implementation = "eager"
    row_masks = [None]
    for name in names[1:]:
        group, label = name.split("/")
        layers = range(3) if group == "all" else range(1, 3)
        row_masks.append(reference_row(runner, case["neurons"], "en", "zh",
                                       None if label == "off" else float(label[1:]), layers))
    table_m = ExpertMasks(*(np.stack([m[0][k] for m in row_masks[1:]]) for k in range(2)))
    table_v = ExpertMasks(*(np.stack([m[1][k] for m in row_masks[1:]]) for k in range(2)))
    nll64 = naive_moe.nll_intervened(model, refs * len(names), table_m,
                                     [r - 1 for r in range(len(names)) for _ in refs], table_v)
    nll32 = naive_moe.nll_intervened(model, refs * len(names), table_m,
                                     [r - 1 for r in range(len(names)) for _ in refs], table_v, dtype=torch.float32)
    nll64, nll32 = nll64.reshape(len(names), -1), nll32.reshape(len(names), -1)
    langs = {"ppl_source": ref_lang == "en", "ppl_target": ref_lang == "zh"}

    def log_ppl(nll, r, sel):
        return nll[r][sel].sum() / tokens[sel].sum()
    # the dtype rule over the whole table, as in test_ablate: <= 2x plain transformers' fp32 error
    bound = 2 * max(abs(log_ppl(nll32, r, sel) - log_ppl(nll64, r, sel)) for r in range(len(names))
                    for sel in langs.values()) + 1e-9
    for r, (name, row) in enumerate(zip(names, got["rows"])):
        hooks = [] if row_masks[r] is None else naive_moe.intervene(net, *row_masks[r])
        try:
            want = [naive.greedy(model, [p], 6, model=net)[0] for p in ids]
        finally:
            for h in hooks:
                h.remove()
        assert [outputs[f"{name}|prompts/{i}"] for i in range(2)] == want, name
        for key, sel in langs.items():
            assert abs(np.log(row[key]) - log_ppl(nll64, r, sel)) <= bound, (name, key)
    assert got["rows"][2]["neurons_set"] == int((row_masks[2][1].experts != 0).sum() + (row_masks[2][1].always_on != 0).sum())
    # the interventions do something: some rows write other tokens than the baseline
    assert any(outputs[f"{n}|prompts/0"] != outputs["baseline|prompts/0"] for n in names[1:])
    before = (out / "outputs.jsonl").read_text()
    assert run(steer, "lna-steer", args) == 0 and (out / "outputs.jsonl").read_text() == before
    assert json.loads((out / "steer.json").read_text())["rows"] == got["rows"]


def test_steer_expert_refusals(cases, tmp_path, capsys):
    from lna.cli.steer import steer

    case = cases("qwen2_moe")
    base = ["-q", "--model", case["model"], "--neurons", str(case["sets"]), "--store", moe_store(case),
            "--from", "en", "--to", "zh", "--prompts", str(write_prompts(tmp_path)), "-o", str(tmp_path / "out")]
    for extra, words in (([], "no mean activation to steer to"),
                         (["--value", "constant", "--to", "th"], "no expert neuron set for 'th'"),
                         (["--value", "constant", "--methods", "diffmean"], "are for dense models")):
        code = run(steer, "lna-steer", base + extra)
        assert words in one_line_error(capsys, code)
        assert not (tmp_path / "out").exists()


def moe_store(case) -> str:
    """A count store of the case's model (lna-steer checks its identity), made once."""
    from conftest import profile_cli

    store = case["root"] / "moe.zarr"
    if not store.exists():
        ds = write_jsonl(case["root"] / "d.jsonl", DATA)
        assert profile_cli("--model", case["model"], "--dataset", ds, "--out", store) == 0
    return str(store)


def write_prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("Q: 2+3?\n", encoding="utf-8")
    return path
