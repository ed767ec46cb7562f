"""The Python API (lna.profile, open, identify, ablate, count): the same results as the CLIs,
bit for bit; lna.count exact against naive hooks and equal to force-decoding the same tokens
through lna-profile; refusals and restoring the model."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import lna
import naive
from lna import cli
from lna.core.errors import LnaError

LANGS = ["en", "zh", "th"]
HEAVY = ("torch", "numpy", "transformers", "zarr", "xarray", "pandas", "matplotlib")


def run_cli(main, *argv):
    with pytest.raises(SystemExit) as done:
        main(list(argv))
    assert done.value.code == 0, argv


@pytest.fixture(scope="module")
def model_path(tiny_models):
    return tiny_models["llama"]


@pytest.fixture(scope="module")
def tokenizer(model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


def jsonl(path, tokenizer, records):
    """A dataset with given responses as token ids (lna's responses-file fields), so that
    lna-profile force-decodes exactly these tokens."""
    from lna.inputs.responses import tokenizer_id

    tid = tokenizer_id(tokenizer)
    with open(path, "w", encoding="utf-8") as fh:
        for i, (lang, prompt, responses) in enumerate(records):
            fh.write(json.dumps({"key": f"d/{lang}/{i}", "lang": lang, "prompt": tokenizer.decode(prompt),
                                 "prompt_ids": list(prompt), "responses": [tokenizer.decode(r) for r in responses],
                                 "response_ids": [list(r) for r in responses], "tokenizer": tid}) + "\n")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory, tokenizer):
    rng = np.random.default_rng(5)
    records = []
    for q in range(9):
        prompt = [1] + rng.integers(3, 259, rng.integers(4, 20)).tolist()
        responses = [rng.integers(3, 259, rng.integers(3, 30)).tolist() for _ in range(1 + q % 3)]
        records.append((LANGS[q % 3], prompt, responses))
    return jsonl(tmp_path_factory.mktemp("data") / "given.jsonl", tokenizer, records)


@pytest.fixture(scope="module")
def stores(tmp_path_factory, model_path, data):
    """The same profile through the CLI and through lna.profile."""
    root = tmp_path_factory.mktemp("stores")
    run_cli(cli.profile_main, "--model", model_path, "--dataset", str(data), "--out", str(root / "cli.zarr"), "-q")
    api = lna.profile(model_path, data, langs="all", out=root / "api.zarr", progress=False)
    return root, api


# -- import ------------------------------------------------------------------------------------
def test_import_lna_loads_no_heavy_module():
    code = ("import sys, lna; heavy = %r; print([m for m in heavy if m in sys.modules]); "
            "lna.open, lna.identify, lna.Store, lna.NeuronSets; print('torch' in sys.modules)") % (HEAVY,)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]", out  # nothing heavy at import
    assert out[1] == "False", out  # reading stores and identifying never loads torch
    assert set(lna.__all__) >= {"profile", "open", "identify", "ablate", "count", "steer", "Store", "NeuronSets"}


# -- profile / open ----------------------------------------------------------------------------
def test_profile_equals_the_cli(stores):
    from lna.storage.store import open_store

    root, api = stores
    cli_store = open_store(root / "cli.zarr")
    assert isinstance(api, lna.Store) and api.path == root / "api.zarr"
    for name in ("counts", "tokens", "sums", "active_sums"):
        assert np.array_equal(getattr(api, name), getattr(cli_store, name)), name
    assert api.languages == cli_store.languages == LANGS
    assert {k: v for k, v in api.meta.items()} == cli_store.meta
    for lang in LANGS:
        assert np.array_equal(api.samples[lang].ids, cli_store.samples[lang].ids)
    assert api.tokens.sum() > 0 and api.counts.any()


def test_open_gives_labelled_arrays_and_a_useful_repr(stores):
    root, _ = stores
    store = lna.open(root / "api.zarr")
    ds = store.to_xarray()
    assert ds.counts.dims == ("layer", "language", "neuron")
    assert list(ds.language.values) == LANGS and ds.sizes == {"layer": 3, "language": 3, "neuron": 96}
    assert np.array_equal(ds.counts.sel(language="zh").values, store.counts[:, 1])
    assert np.array_equal(ds.probability.values, store.probabilities()) and np.array_equal(ds.tokens, store.tokens)
    assert ds.attrs["template"] == store.meta["template"] and ds.attrs["dtype"] == "float32"
    text = repr(store)
    assert "3 layers x 3 languages x 96 neurons" in text and f"{int(store.tokens.sum()):,} response tokens" in text
    assert str(root / "api.zarr") in text and "th " in text
    assert store._repr_html_().count("<tr>") == 1 + len(LANGS)


def test_unknown_option_is_one_line(model_path, data, tmp_path):
    with pytest.raises(LnaError, match=r"lna.profile: unknown option temprature; it takes .*temperature"):
        lna.profile(model_path, data, out=tmp_path / "x.zarr", temprature=0.5)
    assert not (tmp_path / "x.zarr").exists()


# -- identify ----------------------------------------------------------------------------------
@pytest.mark.parametrize("argv,kw", [([], {}), (["--method", "lape"], {"method": "lape"}),
                                     (["--lambda", "0.05", "--top-rate", "0.05"], {"lam": 0.05, "top_rate": 0.05}),
                                     (["--langs", "en,th"], {"langs": ["en", "th"]})])
def test_identify_equals_the_cli(stores, tmp_path, argv, kw):
    root, _ = stores
    path = str(root / "cli.zarr")
    run_cli(cli.identify_main, path, "-o", str(tmp_path / "cli.json"), "--export-pt", str(tmp_path / "cli.pt"), *argv)
    sets = lna.identify(path, **kw)
    sets.save(tmp_path / "api.json")
    sets.to_pt(tmp_path / "api.pt")
    assert (tmp_path / "api.json").read_bytes() == (tmp_path / "cli.json").read_bytes()
    assert (tmp_path / "api.pt").read_bytes() == (tmp_path / "cli.pt").read_bytes()
    # an opened Store identifies the same way
    assert lna.identify(lna.open(path), **kw).to_json() == sets.to_json()


def test_neuron_sets_views(stores):
    root, _ = stores
    sets = lna.identify(str(root / "cli.zarr"), top_rate=0.1, tau_quantile=0.5)
    split = sets.split("specific")
    for lang in LANGS:
        assert all(np.array_equal(a, b) for a, b in zip(sets.specific(lang), split[lang]))
    # shared(a, b): listed under both, from the sets themselves
    for layer in range(sets.layers):
        want = sorted(set(sets.sets["en"][layer].tolist()) & set(sets.sets["zh"][layer].tolist()))
        assert sets.shared("en", "zh")[layer].tolist() == want
        listed = [i for lang in LANGS for i in sets.sets[lang][layer].tolist()]
        assert sets.shared()[layer].tolist() == sorted({i for i in listed if listed.count(i) > 1})
    assert any(len(a) for a in sets.shared()), "no related neuron: the test proved little"
    masks = sets.to_pt()
    assert [[m.tolist() for m in per] for per in masks] == [[a.tolist() for a in sets.sets[lang]] for lang in LANGS]
    text = repr(sets)
    assert "ternary" in text and "3 layers x 96 neurons" in text and "en " in text
    assert sets._repr_html_().count("<tr>") == 1 + len(LANGS)
    with pytest.raises(LnaError, match="no 'xx'"):
        sets.specific("xx")
    with pytest.raises(LnaError, match="two or more"):
        sets.shared("en")


# -- ablate ------------------------------------------------------------------------------------
def test_ablate_equals_the_cli(stores, model_path, data, tmp_path):
    root, _ = stores
    neurons = tmp_path / "n.json"
    lna.identify(str(root / "cli.zarr"), top_rate=0.1).save(neurons)
    run_cli(cli.ablate_main, "--model", model_path, "--neurons", str(neurons), "--responses", str(data),
            "-o", str(tmp_path / "cli"), "--limit", "2", "-q")
    want = json.loads((tmp_path / "cli" / "ppl.json").read_text())
    ppl = lna.ablate(model_path, lna.NeuronSets.load(neurons), data, limit=2, progress=False)
    assert ppl.dims == ("setting", "deactivated", "target") and list(ppl.target.values) == want["languages"]
    for name, s in want["settings"].items():
        got = ppl.sel(setting=name, deactivated=s["rows"]).values
        assert np.array_equal(got, np.array(s["ppl"])), name  # bit for bit
    change = ppl - ppl.sel(deactivated="baseline")
    s = want["settings"]["specific"]
    assert np.array_equal(change.sel(setting="specific", deactivated=s["rows"]).values, np.array(s["change"]))


# -- count -------------------------------------------------------------------------------------
@pytest.fixture
def model(model_path):
    return naive.load(model_path)


def gate_spy(model, gates):
    """Forward hooks on every gate_proj (which the counting MLP calls too): the gates of
    every forward [tokens, neurons], as computed, for a reference count of the very same numbers."""
    def hook(li):
        return lambda module, inputs, out: gates.setdefault(li, []).append(out.detach().reshape(-1, out.shape[-1]))

    return [layer.mlp.gate_proj.register_forward_hook(hook(li)) for li, layer in enumerate(naive.layers(model))]


def test_count_around_generate_equals_hooks_and_lna_profile(model, model_path, tokenizer, tmp_path, capsys):
    rng = np.random.default_rng(11)
    prompts = [[1] + rng.integers(3, 259, int(rng.integers(3, 12))).tolist() for _ in range(6)]
    codes = [LANGS[i % 3] for i in range(6)]
    width = max(map(len, prompts))
    ids = torch.tensor([[2] * (width - len(p)) + p for p in prompts])
    attn = (torch.arange(width)[None, :] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
    K = 10
    with torch.no_grad():  # pick an end token that ends row 0 early: EOS and padding rows are exercised
        plain = model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=K, do_sample=False,
                               pad_token_id=2)[:, width:]
    stop = int(plain[0, 3])
    eos = {2, stop}
    gates, hooks = {}, []
    try:
        with lna.count(model, LANGS, eos=eos, sums=True) as counter:
            hooks = gate_spy(model, gates)
            with counter.language(codes, generated=True):
                out = model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=K, do_sample=False,
                                     pad_token_id=2, eos_token_id=sorted(eos))[:, width:]
    finally:
        for h in hooks:
            h.remove()
    # The responses: the tokens fed back (all but the last returned), up to the first end token.
    responses = []
    for row in out.tolist():
        fed = row[:K - 1]
        cut = next((i for i, t in enumerate(fed) if t in eos), len(fed))
        responses.append(fed[:cut])
    assert len(responses[0]) == 3 and any(len(r) == K - 1 for r in responses), "no row ran to the limit"
    # Reference 1: the hooked gates of the same run, response positions chosen from the output alone.
    ref = np.zeros_like(counter.counts)
    for li, steps in gates.items():
        assert len(steps) == K  # the prompt, then K - 1 fed tokens
        for j, g in enumerate(steps[1:]):
            g = g.view(len(prompts), -1, g.shape[-1])[:, -1]
            for r, resp in enumerate(responses):
                if j < len(resp):
                    ref[li, LANGS.index(codes[r])] += (g[r] > 0).numpy()
    assert np.array_equal(counter.counts, ref)
    tokens = np.bincount([LANGS.index(c) for c in codes], [len(r) for r in responses], minlength=3).astype(np.int64)
    assert np.array_equal(counter.tokens, tokens)
    # Reference 2: lna-profile force-decoding the same tokens (given responses): exact up to gates
    # within rounding of zero (KV-cached decoding sums in another order), as counting while sampling.
    data = jsonl(tmp_path / "gen.jsonl", tokenizer, [(c, p, [r]) for c, p, r in zip(codes, prompts, responses)])
    run_cli(cli.profile_main, "--model", model_path, "--dataset", str(data), "--out", str(tmp_path / "p.zarr"), "-q")
    profiled = lna.open(tmp_path / "p.zarr")
    assert profiled.languages == LANGS and np.array_equal(profiled.tokens, counter.tokens)
    from lna.inputs.samples import Sample

    samples = [Sample(f"s{i}", c, tuple(p), tuple(r)) for i, (c, p, r) in enumerate(zip(codes, prompts, responses))]
    naive_ref, amb = naive.counts(model_path, samples, LANGS)
    diff = np.abs(counter.counts - profiled.counts)
    assert (diff <= amb).all() and diff.sum() <= amb.sum()
    naive.assert_counts_equal(counter.counts, naive_ref, amb)
    sums_ref, active_ref, scale = naive.activation_sums(model_path, samples, LANGS)
    assert (np.abs(counter.sums - sums_ref) <= 1e-6 * scale).all()
    assert (np.abs(counter.active_sums - active_ref) <= 1e-6 * scale).all()
    # The store records the same samples by content as lna-profile did: lna merge refuses the overlap.
    store = counter.save(tmp_path / "c.zarr")
    assert store.meta["counted_during"] == "sampling"
    assert store.meta["model_fingerprint"] == profiled.meta["model_fingerprint"]
    for lang in LANGS:
        assert np.array_equal(np.sort(store.samples[lang].ids), np.sort(profiled.samples[lang].ids))
    with pytest.raises(SystemExit) as done:
        cli.main(["merge", str(tmp_path / "c.zarr"), str(tmp_path / "p.zarr"), "-o", str(tmp_path / "m.zarr")])
    assert done.value.code != 0 and not (tmp_path / "m.zarr").exists()
    assert "already counted in" in capsys.readouterr().err


def test_count_forward_with_padding_and_masks_equals_hooks(model, model_path, tmp_path):
    rng = np.random.default_rng(3)
    ids = torch.tensor(rng.integers(3, 259, (3, 12)))
    attn = torch.ones(3, 12, dtype=torch.long)
    attn[1, :4] = 0  # left padding
    mask = torch.zeros(3, 12, dtype=torch.bool)
    mask[:, 7:] = True  # "responses": the last five positions
    mask[2, 2:] = True
    gates, hooks = {}, []
    try:
        with lna.count(model, ["en", "zh"]) as counter, torch.no_grad():
            hooks = gate_spy(model, gates)
            with counter.language(["en", "zh", "en"], mask=mask):
                model(input_ids=ids, attention_mask=attn)
            with counter.language(None):  # not counted
                model(input_ids=ids)
            with counter.language("zh"):  # every real token
                model(input_ids=ids, attention_mask=attn)
    finally:
        for h in hooks:
            h.remove()
    want = np.zeros_like(counter.counts)
    valid = mask & attn.bool()
    for li, (first, _, last) in gates.items():
        first, last = first.view(3, 12, -1), last.view(3, 12, -1)
        for r, k in enumerate([0, 1, 0]):
            want[li, k] += (first[r][valid[r]] > 0).sum(0).numpy()
        want[li, 1] += (last[attn.bool()] > 0).sum(0).numpy()
    assert np.array_equal(counter.counts, want)
    assert counter.tokens.tolist() == [int(valid[0].sum() + valid[2].sum()), int(valid[1].sum() + attn.sum())]
    # a saved count store is a store like any: it opens, and merges with stores of other samples
    counter.save(tmp_path / "f.zarr")
    assert lna.open(tmp_path / "f.zarr").meta["counted_during"] == "force-decoding"
    with lna.count(model, ["zh", "th"]) as other, torch.no_grad(), other.language(["th", "zh", "th"]):
        model(input_ids=ids[:, :9])
    other.save(tmp_path / "g.zarr")
    run_cli(cli.main, "merge", str(tmp_path / "f.zarr"), str(tmp_path / "g.zarr"), "-o", str(tmp_path / "fg.zarr"))
    merged = lna.open(tmp_path / "fg.zarr")
    assert merged.languages == ["en", "zh", "th"]
    added = np.stack([np.zeros_like(other.counts[:, 0]), other.counts[:, 0]], 1)
    assert np.array_equal(merged.counts[:, :2], counter.counts + added)
    assert np.array_equal(merged.counts[:, 2], other.counts[:, 1])
    assert merged.tokens.tolist() == [counter.tokens[0], counter.tokens[1] + other.tokens[0], other.tokens[1]]


def fresh_logits(model_path, ids):
    with torch.no_grad():
        return naive.load(model_path)(ids).logits


def assert_restored(model, model_path):
    from transformers.models.llama.modeling_llama import LlamaMLP

    assert all(type(layer.mlp) is LlamaMLP for layer in naive.layers(model))
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in (model, model.model))
    ids = torch.tensor([[1, 40, 50, 60, 70]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, fresh_logits(model_path, ids))


def test_nested_and_reentrant_use_is_refused(model, model_path):
    from lna.core.errors import LnaError

    with lna.count(model, "en") as counter:
        with pytest.raises(LnaError, match="already being counted"):
            with lna.count(model, "en"):
                pass
        with pytest.raises(LnaError, match="already counting"):
            with counter:
                pass
        with pytest.raises(LnaError, match="under an intervention"):
            with lna.steer(model, zero={0: [1, 2]}), torch.no_grad():
                model(torch.tensor([[1, 5, 6]]))
    with pytest.raises(LnaError, match="has finished"):
        with counter:
            pass
    with lna.steer(model, zero={0: [1]}):
        with pytest.raises(LnaError, match="under lna.steer"):
            with lna.count(model, "en"):
                pass
    assert_restored(model, model_path)


def test_leaving_by_an_exception_restores_the_model(model, model_path):
    with pytest.raises(RuntimeError, match="boom"):
        with lna.count(model, ["en", "zh"]) as counter, torch.no_grad():
            with counter.language("en"):
                model(torch.tensor([[1, 5, 6]]))
            raise RuntimeError("boom")
    assert_restored(model, model_path)
    # an error inside a forward (no language for it; a gradient asked for) too
    with pytest.raises(LnaError, match="no language"):
        with lna.count(model, ["en", "zh"]), torch.no_grad():
            model(torch.tensor([[1, 5, 6]]))
    assert_restored(model, model_path)
    with pytest.raises(LnaError, match="no gradients"):
        with lna.count(model, "en"):
            model(torch.tensor([[1, 5, 6]]))
    assert_restored(model, model_path)
    with pytest.raises(LnaError, match="2 languages for a batch of 1 rows"):
        with lna.count(model, ["en", "zh"]) as counter, torch.no_grad(), counter.language(["en", "zh"]):
            model(torch.tensor([[1, 5, 6]]))
    assert_restored(model, model_path)


def test_count_refuses_unknown_languages(model):
    with pytest.raises(LnaError, match="give langs="):
        lna.count(model, [])
    with lna.count(model, ["en"]) as counter:
        with pytest.raises(LnaError, match="'zh' is not one of the counted languages en"):
            with counter.language("zh"):
                pass
    assert "finished" in repr(counter) and counter.tokens.tolist() == [0]


def test_missing_xarray_and_unfinished_stores_are_one_line(stores, model_path, data, tmp_path, monkeypatch):
    from dataclasses import replace

    root, api = stores
    monkeypatch.setitem(sys.modules, "xarray", None)  # as if the extra were not installed
    with pytest.raises(LnaError, match=r"pip install 'lna\[xarray\]'"):
        api.to_xarray()
    with pytest.raises(LnaError, match=r"pip install 'lna\[xarray\]'"):
        lna.ablate(model_path, str(tmp_path / "none.json"), data, out=tmp_path / "never")
    assert not (tmp_path / "never").exists()  # said before any work
    monkeypatch.undo()
    unfinished = lna.Store.of(replace(api, complete=False), api.path)
    with pytest.raises(LnaError, match="unfinished profile"):
        lna.identify(unfinished)
    assert lna.identify(unfinished, allow_partial=True).to_json() == lna.identify(api).to_json()


def test_generated_counting_needs_the_cache(model, model_path):
    with pytest.raises(LnaError, match="use_cache=False"):
        with lna.count(model, "en") as counter, counter.language("en", generated=True):
            model.generate(input_ids=torch.tensor([[1, 5, 6]]), max_new_tokens=3, do_sample=False, use_cache=False,
                           pad_token_id=2)
    assert_restored(model, model_path)
