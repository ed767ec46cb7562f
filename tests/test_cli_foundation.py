"""The foundation commands through their CLI entry: happy paths and every bad-input path
(one line on stderr, non-zero exit, nothing left behind)."""
import json
import re
from pathlib import Path

import click
import numpy as np
import pytest
import torch

from lna.cli import run
from lna.cli.identify import identify
from lna.cli.import_counts import import_counts
from lna.cli.merge import merge
from lna.cli.report import report
from lna.storage.counts import CountStore
from lna.storage.store import open_store, save_store

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {"import-counts": import_counts, "identify": identify, "report": report, "merge": merge}


@pytest.fixture
def lna(capsys):
    """lna(command, *args) -> (exit status, stdout, stderr)."""
    def call(name, *args):
        rc = run(COMMANDS[name], f"lna-{name}", [str(a) for a in args])
        out, err = capsys.readouterr()
        return rc, out, err

    return call


def fails(result, *words):
    rc, out, err = result
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def tiny_store(tmp_path, name="s.zarr", langs=("en", "zh", "ja"), model="org/m", seed=0, complete=True):
    rng = np.random.default_rng(seed)
    tokens = np.full(len(langs), 1000)
    rate = rng.beta(5.0, 30.0, (4, len(langs), 200))
    rate[:, :, :3] = 0.99
    rate[0, 0, 10] = rate[3, -1, 11] = 0.9
    store = CountStore(np.round(rate * 1000).astype(np.int64), tokens, list(langs), {"model": model})
    store.complete = complete
    return save_store(store, tmp_path / name)


def release_folder(tmp_path, langs=("en", "zh")):
    folder = tmp_path / "release"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for lang in langs:
        prefix = rng.integers(0, 50, (2, 30))
        torch.save({"total_tokens": 300, "over_zero": torch.as_tensor(prefix + rng.integers(0, 100, (2, 30)))},
                   folder / f"activation.{lang}.M.pt")
        torch.save({"total_tokens": 100, "over_zero": torch.as_tensor(prefix)}, folder / f"prefix.activation.{lang}.M.pt")
    return folder


def only(tmp_path, *names):
    """Nothing but these entries (no temporary or half-written output) in tmp_path."""
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


# -- import-counts ----------------------------------------------------------------------------
def test_import_counts(lna, tmp_path):
    rc, out, err = lna("import-counts", release_folder(tmp_path), "-o", tmp_path / "s.zarr", "--model", "x/y")
    assert rc == 0, err
    assert "imported 2 languages (en, zh)" in out
    store = open_store(tmp_path / "s.zarr")
    assert store.meta["model"] == "x/y" and store.tokens.tolist() == [200, 200]
    fails(lna("import-counts", tmp_path / "release", "-o", tmp_path / "s.zarr"), "already exists", "--force")
    assert lna("import-counts", tmp_path / "release", "-o", tmp_path / "s.zarr", "--force")[0] == 0


def test_import_counts_bad_inputs(lna, tmp_path):
    out = tmp_path / "s.zarr"
    fails(lna("import-counts", tmp_path / "nope.npz", "-o", out), "nope.npz", "no such file")
    (tmp_path / "activation.en.M.pt").write_text("not torch")
    (tmp_path / "prefix.activation.en.M.pt").write_text("not torch")
    fails(lna("import-counts", tmp_path / "activation.en.M.pt", tmp_path / "prefix.activation.en.M.pt", "-o", out),
          "not a readable torch file")
    (tmp_path / "notes.txt").write_text("hello")
    fails(lna("import-counts", tmp_path / "notes.txt", "-o", out), "not a released count file")
    bad = tmp_path / "bad"
    bad.mkdir()
    t = {"total_tokens": 5, "over_zero": torch.zeros(2, 3, dtype=torch.long)}
    torch.save(t, bad / "activation.xx.M.pt")
    torch.save(t, bad / "prefix.activation.xx.M.pt")
    fails(lna("import-counts", bad, "-o", out), "unknown language 'xx'")
    fails(lna("import-counts", "-o", out), "Missing argument")
    assert not out.exists()
    only(tmp_path, "activation.en.M.pt", "prefix.activation.en.M.pt", "notes.txt", "bad")


# -- identify -----------------------------------------------------------------------------------
def test_identify(lna, tmp_path):
    store = tiny_store(tmp_path)
    rc, out, err = lna("identify", store, "-o", tmp_path / "n.json", "--export-pt", tmp_path / "m.pt")
    assert rc == 0, err
    assert "tau" in out and "lambda" in out and "general (N=3)" in out
    obj = json.loads((tmp_path / "n.json").read_text())
    mask = torch.load(tmp_path / "m.pt", weights_only=True)
    assert [[t.tolist() for t in layers] for layers in mask] == [obj["sets"][lang] for lang in obj["languages"]]
    assert obj["source"]["store"] == str(store) and obj["lambda_auto"] is True
    rc, out, err = lna("identify", store, "-o", tmp_path / "l.json", "--method", "lape", "--langs", "en,zh",
                       "--top-rate", "0.02", "--tau-quantile", "0.9")
    assert rc == 0, err
    obj = json.loads((tmp_path / "l.json").read_text())
    assert obj["method"] == "lape" and obj["languages"] == ["en", "zh"] and obj["lambda"] is None
    assert obj["top_rate"] == 0.02 and obj["tau_quantile"] == 0.9
    assert lna("identify", store, "-o", tmp_path / "f.json", "--lambda", "0.05")[0] == 0
    assert json.loads((tmp_path / "f.json").read_text())["lambda"] == 0.05


def test_identify_says_when_lambda_stops_at_the_top_of_its_range(lna, tmp_path):
    """A store where no neuron is above tau for every language: no lambda can select one, so
    the search ends at 0.2 without having found a bound there."""
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 100, (2, 3, 300))
    counts[:, 0, :150] = 0  # half the neurons never fire in en: none is shared by all three
    save_store(CountStore(counts, np.full(3, 100), ["en", "zh", "ja"], {"model": "org/m"}), tmp_path / "s.zarr")
    rc, out, err = lna("identify", tmp_path / "s.zarr", "-o", tmp_path / "n.json")
    assert rc == 0, err
    assert "general (N=3): 0" in out
    assert "lambda 0.2 (auto: the top of the searched range [0, 0.2]" in out


def test_identify_bad_inputs(lna, tmp_path):
    store = tiny_store(tmp_path)
    out = tmp_path / "n.json"
    fails(lna("identify", tmp_path / "missing.zarr", "-o", out), "no such count store")
    (tmp_path / "text.txt").write_text("hello")
    fails(lna("identify", tmp_path / "text.txt", "-o", out), "not an lna count store")
    fails(lna("identify", store, "-o", out, "--langs", "en,xx"), "unknown language 'xx'")
    fails(lna("identify", store, "-o", out, "--langs", "en,sw"), "has no sw")
    fails(lna("identify", store, "-o", out, "--lambda", "big"), "--lambda")
    fails(lna("identify", store, "-o", out, "--method", "lape", "--lambda", "0.1"), "ternary method only")
    fails(lna("identify", store, "-o", out, "--method", "magic"), "magic")
    fails(lna("identify", store, "-o", out, "--top-rate", "0"), "--top-rate")
    fails(lna("identify", store, "-o", tmp_path), "is a folder")
    fails(lna("identify", store, "-o", out, "--export-pt", tmp_path), "is a folder")
    partial = tiny_store(tmp_path, "p.zarr", complete=False)
    fails(lna("identify", partial, "-o", out), "unfinished profile")
    assert lna("identify", partial, "-o", out, "--allow-partial")[0] == 0
    out.unlink()
    only(tmp_path, "s.zarr", "p.zarr", "text.txt")


def test_identify_reproduces_release(lna, tmp_path, shared_data):
    """The acceptance path as a user runs it: import the reference, identify with defaults."""
    ref = shared_data / "reference"
    assert lna("import-counts", ref / "mistralmathoctopus7b-mgsm-counts.npz", "-o", tmp_path / "s.zarr")[0] == 0
    rc, out, err = lna("identify", tmp_path / "s.zarr", "-o", tmp_path / "n.json", "--export-pt", tmp_path / "m.pt")
    assert rc == 0, err
    assert "tau 0.564436" in out and "lambda 0.109375 (auto)" in out
    released = json.loads((ref / "mistralmathoctopus7b-mgsm-mask-0.01-0.109375.json").read_text())
    obj = json.loads((tmp_path / "n.json").read_text())
    assert obj["sets"] == released and obj["lambda"] == 0.109375
    # the summary's neurons of no language: the 1% selected, less those the released sets list
    selected = round(32 * 14336 * 0.01)
    listed = len({(layer, i) for sets in released.values() for layer, idx in enumerate(sets) for i in idx})
    unlisted = selected - listed
    assert f"selected {selected} neurons: {listed} are above tau in some language; {unlisted} " \
           f"({round(100 * unlisted / selected)}%) are above tau in no language" in out
    assert "top of the searched range" not in out
    mask = torch.load(tmp_path / "m.pt", weights_only=True)
    assert [[t.tolist() for t in layers] for layers in mask] == list(released.values())


# -- report ---------------------------------------------------------------------------------------
def test_report_from_store_and_from_neurons(lna, tmp_path):
    store = tiny_store(tmp_path)
    rc, out, err = lna("report", store, "-o", tmp_path / "r1", "--top-rate", "0.02")
    assert rc == 0, err
    only(tmp_path / "r1", "languages.csv", "layers.csv", "layers.png", "neurons.json",
         "shared_by_n.csv", "shared_by_n.png")
    rc, out, err = lna("report", tmp_path / "r1" / "neurons.json", "-o", tmp_path / "r2")
    assert rc == 0, err
    for name in ("layers.csv", "shared_by_n.csv", "languages.csv"):
        assert (tmp_path / "r1" / name).read_text() == (tmp_path / "r2" / name).read_text()


def test_report_bad_inputs(lna, tmp_path):
    store = tiny_store(tmp_path)
    out = tmp_path / "r"
    fails(lna("report", tmp_path / "missing", "-o", out), "no such count store or neuron-set file")
    (tmp_path / "text.txt").write_text("hello")
    fails(lna("report", tmp_path / "text.txt", "-o", out), "not a neuron-set JSON")
    fails(lna("report", store, "-o", out, "--langs", "xx"), "unknown language 'xx'")
    fails(lna("report", store, "-o", tmp_path / "text.txt"), "not a folder")
    (tmp_path / "n.json").write_text(json.dumps({"method": "ternary"}))
    fails(lna("report", tmp_path / "n.json", "-o", out), "missing")
    fails(lna("report", tmp_path / "n.json", "-o", out, "--top-rate", "0.05"), "need a count store")
    only(tmp_path, "s.zarr", "text.txt", "n.json")


# -- merge -----------------------------------------------------------------------------------------
def test_merge(lna, tmp_path):
    a = tiny_store(tmp_path, "a.zarr", langs=("en", "zh"), seed=1)
    b = tiny_store(tmp_path, "b.zarr", langs=("ja",), seed=2)
    rc, out, err = lna("merge", a, b, "-o", tmp_path / "m.zarr")
    assert rc == 0, err
    m = open_store(tmp_path / "m.zarr")
    assert m.languages == ["en", "zh", "ja"]
    np.testing.assert_array_equal(m.counts[:, 2], open_store(b).counts[:, 0])


def test_merge_bad_inputs(lna, tmp_path):
    a = tiny_store(tmp_path, "a.zarr")
    other = tiny_store(tmp_path, "o.zarr", model="org/other")
    out = tmp_path / "m.zarr"
    fails(lna("merge", a, other, "-o", out), "different models")
    fails(lna("merge", a, tmp_path / "missing.zarr", "-o", out), "no such count store")
    (tmp_path / "text.txt").write_text("hello")
    fails(lna("merge", a, tmp_path / "text.txt", "-o", out), "not an lna count store")
    ref = tmp_path / "rel"
    import_status = lna("import-counts", release_folder(tmp_path), "-o", ref)
    assert import_status[0] == 0
    fails(lna("merge", ref, ref, "-o", out), "count them twice")
    only(tmp_path, "a.zarr", "o.zarr", "text.txt", "release", "rel")


def test_merge_and_import_counts_console_scripts(tmp_path, capsys):
    """lna-import-counts and lna-merge (the setup.py entries) do what `lna import-counts` and
    `lna merge` do, and fail the same way, in one line under their own name."""
    from lna import cli

    def script(entry, *args):
        with pytest.raises(SystemExit) as done:
            entry([str(a) for a in args])
        out, err = capsys.readouterr()
        return done.value.code, out, err

    release = release_folder(tmp_path)
    assert script(cli.import_counts_main, release, "-o", tmp_path / "s.zarr", "--model", "x/y")[0] == 0
    assert script(cli.main, "import-counts", release, "-o", tmp_path / "l.zarr", "--model", "x/y")[0] == 0
    by_script, by_lna = open_store(tmp_path / "s.zarr"), open_store(tmp_path / "l.zarr")
    np.testing.assert_array_equal(by_script.counts, by_lna.counts)
    assert by_script.languages == by_lna.languages == ["en", "zh"]

    a = tiny_store(tmp_path, "a.zarr", langs=("en", "zh"), seed=1)
    b = tiny_store(tmp_path, "b.zarr", langs=("ja",), seed=2)
    assert script(cli.merge_main, a, b, "-o", tmp_path / "m.zarr")[0] == 0
    assert script(cli.main, "merge", a, b, "-o", tmp_path / "n.zarr")[0] == 0
    np.testing.assert_array_equal(open_store(tmp_path / "m.zarr").counts, open_store(tmp_path / "n.zarr").counts)
    assert open_store(tmp_path / "m.zarr").languages == ["en", "zh", "ja"]
    line = fails(script(cli.merge_main, tmp_path / "s.zarr", tmp_path / "s.zarr", "-o", tmp_path / "x.zarr"),
                 "count them twice")
    assert line.startswith("lna-merge: error: ")
    assert not (tmp_path / "x.zarr").exists()


# -- help ----------------------------------------------------------------------------------------------
def test_every_script_and_subcommand_takes_h_and_every_option_has_help(capsys):
    """`-h` works on `lna`, on every `lna-*` console script and every `lna NAME`, and every
    option of every command says what it does."""
    from lna import cli

    scripts = re.findall(r'"(lna(?:-[a-z-]+)?)=lna\.cli:(\w+)"', (REPO / "setup.py").read_text())
    # one console script per subcommand, named after it, and `lna` itself
    assert sorted(s for s, _ in scripts) == sorted(["lna"] + [f"lna-{name}" for name in cli._commands()])
    for script, entry in scripts:
        with pytest.raises(SystemExit) as done:
            getattr(cli, entry)(["-h"])
        assert done.value.code == 0, script
        assert capsys.readouterr().out.startswith(f"Usage: {script} "), script
    for name, command in cli._commands().items():
        with pytest.raises(SystemExit) as done:
            cli.main([name, "-h"])
        assert done.value.code == 0 and capsys.readouterr().out.startswith(f"Usage: lna {name} ")
        for param in command.params:
            if isinstance(param, click.Option) and param.name != "help":
                assert param.help, f"lna {name} {param.opts[0]} has no help text"
