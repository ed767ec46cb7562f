"""lna-steer's interventions and strength search (issue 23): per-neuron quantiles against a
float64 hook reference, the layers where the sets concentrate, the search's ladder and
bisection, and on the tiny model the methods, "dense" layers and search run end to end and
reproduce bit for bit (a fresh run and a resumed one); the template check."""
import json

import numpy as np
import pytest
import torch

import naive
from conftest import random_samples
from lna import cli
from lna.core.errors import LnaError
from lna.interventions.steer import methods, search
from test_steer import made, sets, steer_cli, store  # noqa: F401  (made: a fixture)


# -- building the interventions -------------------------------------------------------------------------
def test_dense_layers_and_quantile_values():
    ns, st = sets(), store()  # en: layer 0 {0, 1}, layer 1 {2}; zh: layer 0 {1, 3}
    assert methods.dense_layers(ns, ("en", "zh"), "specific+related") == [0]  # 3 of 4 neurons
    assert methods.dense_layers(ns, ("en",), "specific+related") == [0]  # 2 of 3: half is enough
    level = np.arange(12, dtype=np.float64).reshape(2, 6) / 7
    iv = methods.build("quantile", ns, st, "en", "zh", 2.0, None, setting="specific+related", value="mean",
                       quantiles=level)
    assert iv.values[0, 3] == np.float32(2 * 3 / 7) and iv.values[0, 1] == np.float32(2 * 1 / 7)
    assert iv.values[0, 0] == 0 and iv.mask[1, 2]  # en's: zeroed
    mean = methods.build("mean", ns, st, "en", "zh", 2.0, None, setting="specific+related", value="mean")
    assert np.array_equal(mean.mask, iv.mask) and iv.values[0, 3] != mean.values[0, 3]
    for bad in ("", "mean,mean", "median"):
        with pytest.raises(LnaError, match="--methods"):
            methods.parse(bad)


def test_quantiles_equal_float64_reference(tiny_models):
    from lna.runners.hf import HFRunner

    path = tiny_models["llama"]
    runner = HFRunner(path)
    samples = random_samples(2, ["ja"], questions=4)
    rng = np.random.default_rng(0)
    mask = rng.random((runner.layers, runner.neurons)) < 0.2
    got = methods.activation_quantiles(runner, samples, mask, 0.9)
    model, gates, acts = naive.load(path), {}, [[] for _ in range(runner.layers)]
    hooks = [naive.gate_hook(layer.mlp, gates, i) for i, layer in enumerate(naive.layers(model))]
    with torch.no_grad():
        for s in samples:
            model(torch.tensor([list(s.prompt) + list(s.response)]))
            for i, g in gates.items():
                acts[i].append(torch.nn.functional.silu(g[len(s.prompt):].double()).numpy())
    for h in hooks:
        h.remove()
    want = np.zeros(mask.shape)
    for i in range(runner.layers):
        want[i, mask[i]] = np.quantile(np.concatenate(acts[i])[:, mask[i]], 0.9, axis=0)
    # a quantile moves by at most the largest change of one activation: fp32 gates in two
    # attention implementations differ by a few ulps (~1e-7); one mis-assigned token would be ~1e-1
    assert np.abs(got - want).max() < 1e-5 and (got[~mask] == 0).all() and (got[mask] != 0).all()
    assert runner.generate([[1, 5, 6]], n=1, temperature=0, top_p=1, max_new_tokens=4, seed=0) == \
        HFRunner(path).generate([[1, 5, 6]], n=1, temperature=0, top_p=1, max_new_tokens=4, seed=0)  # no hook left
    with pytest.raises(LnaError, match="--backend hf"):
        methods.activation_quantiles(object(), samples, mask, 0.9)
    with pytest.raises(LnaError, match="reference responses"):
        methods.activation_quantiles(runner, [], mask, 0.9)


def test_difference_of_means_is_an_offset_on_both_languages_neurons():
    ns, st = sets(), store()  # en: layer 0 {0, 1}, layer 1 {2}; zh: layer 0 {1, 3}
    iv = methods.build("diffmean", ns, st, "en", "zh", 3.0, [0], setting="specific+related", value="mean")
    diff = st.sums[:, 1] / 10 - st.sums[:, 0] / 20  # mean in zh - mean in en (sums / tokens)
    assert not iv.mask.any() and not iv.values.any() and not iv.empty
    want = np.zeros((2, 6), np.float32)
    want[0, [0, 1, 3]] = (3.0 * diff[0, [0, 1, 3]]).astype(np.float32)  # layer 1 left out by `layers`
    assert np.array_equal(iv.offsets, want)


def test_runner_offsets_equal_float64_hook_reference(tiny_models):
    """The transformers runner's additive path (nll and generate) against an unmodified model
    with a hook adding the offsets to act(gate) (tests/naive.py)."""
    from lna.runners.hf import HFRunner

    path = tiny_models["llama"]
    runner = HFRunner(path, token_budget=160, max_row_tokens=90)
    rng = np.random.default_rng(5)
    shape = (2, runner.layers, runner.neurons)
    masks = rng.random(shape) < 0.1
    values = np.where(masks, rng.normal(0, 2, shape), 0).astype(np.float32)
    offsets = np.where(rng.random(shape) < 0.3, rng.normal(0, 1, shape), 0).astype(np.float32)
    samples = random_samples(3, ["en", "zh"], questions=5)
    mask_ids = [[-1, 0, 1][i % 3] for i in range(len(samples))]
    got = runner.nll(samples, masks, mask_ids, values, offsets=offsets)
    ref64 = naive.nll(path, samples, masks, mask_ids, values=values, offsets=offsets)
    ref32 = naive.nll(path, samples, masks, mask_ids, dtype=torch.float32, values=values, offsets=offsets)
    # the dtype rule (tests/test_steer_runner.py): at most twice plain transformers' own fp32 error
    assert np.abs(got - ref64).max() <= 2 * np.abs(ref32 - ref64).max() + 1e-9
    without = runner.nll(samples, masks, mask_ids, values)  # the offsets matter, and only where asked
    steered = np.array(mask_ids) >= 0
    assert (np.abs(without - got)[steered] > 1e-3).all() and np.array_equal(without[~steered], got[~steered])
    prompts = [[1, 40, 41, 42], [1, 50]]
    gen = runner.generate(prompts, n=1, temperature=0, top_p=1, max_new_tokens=10, seed=0, masks=masks[:1],
                          values=values[:1], offsets=offsets[:1], mask_ids=[0, 0])
    assert [g for (g,) in gen] == naive.greedy(path, prompts, 10, masks[0], values[0], offset=offsets[0])

    import lna  # the Python API adds them too
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()
    iv = methods.intervene.Intervention(masks[0], values[0], offsets[0])
    with lna.steer(model, intervention=iv):
        api = model.generate(torch.tensor([prompts[0]]), do_sample=False, max_new_tokens=10, pad_token_id=2)
    assert [t for t in api[0, len(prompts[0]):].tolist()][:len(gen[0][0])] == gen[0][0]


# -- the search --------------------------------------------------------------------------------------------
class _Row:
    def __init__(self, name, strength):
        self.name, self.strength = name, strength


class _Planner:
    groups = [("all", [0, 1])]

    def row(self, method, group, layers, strength):
        return _Row(f"{method}:{group}/x{strength:g}", strength)


class _Session:
    def __init__(self, tmp_path):
        from types import SimpleNamespace

        self.opts, self.keys, self.refs, self.out = SimpleNamespace(source="en", target="fr"), ["q"], [], tmp_path
        self.measured = []

    def measure(self, rows, state):
        self.measured += [r.strength for r in rows]
        return {"nll": {"refs": np.zeros((1, 0)), "outputs": np.zeros((1, 1))}}

    def judge(self, rows, got, max_ppl):
        pass


@pytest.mark.parametrize("step, tried, smallest", [
    (3.0, [0.25, 0.5, 1, 2, 2.828, 3.084, 3.363, 4], 3.084),  # 4 reaches; midpoints sqrt(8), sqrt(2.828*4), ...
    (0.1, [0.25], 0.25),  # the ladder's first strength: nothing below to bisect
    (100.0, [0.25 * 2 ** k for k in range(9)], None),  # never reached
])
def test_search_ladder_then_bisection(monkeypatch, tmp_path, step, tried, smallest):
    def summarize(row, *args):
        share = 0.6 if row.strength >= step else 0.1 + row.strength / 1000  # rises a little below the step
        return {"share_fluent_target": share, "ppl_source": 10.0 * (1 + row.strength), "ppl_target": 5.0}

    monkeypatch.setattr(search.table, "summarize", summarize)
    session = _Session(tmp_path)
    base = _Row("baseline", 0.0)
    grid = {"nll": {"refs": np.zeros((1, 0)), "outputs": np.zeros((1, 1))}}
    (found,) = search.run(session, _Planner(), ("mean",), grid, [base], 100.0, 0.5)
    assert [s for s, _ in found["tried"]] == tried and sorted(session.measured) == tried
    assert found["strength"] == smallest
    best = smallest if smallest is not None else 64.0  # the highest share; below the step it grows with s
    assert found["best_strength"] == best and found["ppl_source_ratio"] == pytest.approx(1 + best)


# -- end to end on the tiny model -----------------------------------------------------------------------
def test_methods_dense_layers_and_search_reproduce_bit_for_bit(made, tmp_path):
    from lna.core import config
    from lna.identification import neurons as neuron_file
    from lna.inputs import data, responses
    from lna.interventions import intervene
    from lna.runners.hf import HFRunner
    from lna.storage.store import open_store

    extra = ["--methods", "mean,quantile,diffmean", "--layers", "dense", "--strengths", "1", "--search", "0.5",
             "--max-new-tokens", "4"]
    files = ("steer.json", "steer.csv", "steer.md", "outputs.jsonl")
    assert steer_cli(made, tmp_path / "a", *extra) == 0
    first = {f: (tmp_path / "a" / f).read_bytes() for f in files}
    assert steer_cli(made, tmp_path / "b", *extra) == 0  # a fresh run
    assert {f: (tmp_path / "b" / f).read_bytes() for f in files} == first
    (tmp_path / "a" / "steer.json").unlink()
    assert steer_cli(made, tmp_path / "a", *extra) == 0  # resumed from its outputs and NLLs
    assert {f: (tmp_path / "a" / f).read_bytes() for f in files} == first
    res = json.loads(first["steer.json"])
    ns, st = neuron_file.load(made["neurons"]), open_store(made["store"])
    dense = methods.dense_layers(ns, ("en", "ja"), "specific+related")
    assert res["layer_groups"] == {"dense": dense}
    assert [r["row"] for r in res["rows"]] == ["baseline", "dense/off", "dense/x1", "quantile:dense/x1",
                                               "diffmean:dense/x1"]
    assert [(s["method"], s["layers"]) for s in res["search"]] == [("mean", "dense"), ("quantile", "dense"),
                                                                   ("diffmean", "dense")]
    assert res["rows"][-1]["neurons_shifted"] > 0 == res["rows"][-1]["neurons_set"]
    ladder = [[s, 0.0] for s in search.LADDER]  # a random model writes no Japanese: the ladder is climbed
    assert all(s["tried"] == ladder and s["strength"] is None for s in res["search"])
    records = [json.loads(line) for line in first["outputs.jsonl"].decode().splitlines()]
    assert len(records) == 3 * (5 + 3 * 8)  # 5 rows + the ladder (x1 shared with the grid) per method
    # the quantile rows are the runner's own greedy answers under the intervention from the quantiles
    runner = HFRunner(made["model"])
    _, questions = data.load(str(made["data"]), "en")
    _, template = config.template_for(made["model"], None, runner.tokenizer)
    refs = responses.samples(responses.tokenized(data.load(str(made["data"]), "ja")[1], runner.tokenizer, template))
    level = methods.activation_quantiles(runner, refs, intervene.neuron_mask(ns, "ja"), 0.9)
    iv = methods.build("quantile", ns, st, "en", "ja", 4.0, dense, setting="specific+related", value="mean",
                       quantiles=level)
    prompts = [responses.encode(runner.tokenizer, q.render(template)) for q in questions]
    got = runner.generate(prompts, n=1, temperature=0, top_p=1, max_new_tokens=4, seed=0, masks=iv.mask[None],
                          values=iv.values[None], mask_ids=[0] * len(prompts))
    by_key = {r["key"]: r["tokens"] for r in records}
    assert [by_key[f"quantile:dense/x4|{q.key}"] for q in questions] == [g for (g,) in got]
    iv = methods.build("diffmean", ns, st, "en", "ja", 2.0, dense, setting="specific+related", value="mean")
    got = runner.generate(prompts, n=1, temperature=0, top_p=1, max_new_tokens=4, seed=0, masks=iv.mask[None],
                          values=iv.values[None], offsets=iv.offsets[None], mask_ids=[0] * len(prompts))
    assert [by_key[f"diffmean:dense/x2|{q.key}"] for q in questions] == [g for (g,) in got]


def test_template_mismatch_is_refused_in_one_line(made, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("What is 2+3?\nWhat is 7-4?\n", encoding="utf-8")
    # the prompts are rendered with the model's template; the references (the store's responses
    # file) were made from the data's verbatim prompts
    argv = ["--prompts", prompts, "--strengths", "1", "--layers", "all", "--max-new-tokens", "2"]
    assert steer_cli(made, tmp_path / "x", *argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "template" in err and "verbatim" in err and "--allow-template-mismatch" in err
    assert not (tmp_path / "x").exists()
    assert steer_cli(made, tmp_path / "x", *argv, "--allow-template-mismatch") == 0
    res = json.loads((tmp_path / "x" / "steer.json").read_text())
    assert res["templates"]["references"] == "verbatim" and res["templates"]["prompts"] != "verbatim"


def test_diffmean_needs_the_transformers_backend(made, tmp_path, capsys, monkeypatch):
    from lna import runners

    real = runners.make_runner  # open_runner looks it up at each call
    monkeypatch.setattr(runners, "make_runner", lambda *a, **kw: (real(*a, **kw)[0], "vllm", "float32"))
    assert steer_cli(made, tmp_path / "z", "--methods", "mean,diffmean") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--backend hf" in err and not (tmp_path / "z").exists()


def test_bad_options_are_one_line(made, tmp_path, capsys):
    for extra, words in ((["--methods", "median"], "--methods"), (["--layers", "dense,dense"], "twice")):
        assert steer_cli(made, tmp_path / "y", *extra) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "y").exists()
    assert cli.run(cli._commands()["steer"], "lna-steer", ["--search", "1.5"]) == 2  # click's usage error
