"""One RunnerOptions, one open_runner: every command that runs a model resolves it once, and
the runner options are declared once (the same checks and messages in every command)."""
from collections import Counter

import pytest
from conftest import SMALL_DATA, one_line_error, write_jsonl

from lna import cli

def _run(name, *args):
    return cli.run(cli._commands()[name], f"lna-{name}", [str(a) for a in args])


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("opts")
    data = write_jsonl(root / "d.jsonl", SMALL_DATA)
    questions = write_jsonl(root / "q.jsonl", [{"id": i, "lang": x, "query": f"{i} + 1 = ?", "answer": str(i + 1)}
                                               for x in ("de", "en") for i in range(2)])  # the model answers
    model = tiny_models["llama"]
    assert _run("profile", "-q", "--model", model, "--dataset", data, "--out", root / "s.zarr") == 0
    assert _run("identify", root / "s.zarr", "-o", root / "n.json", "--top-rate", "0.05") == 0
    return {"root": root, "data": data, "questions": questions, "store": root / "s.zarr",
            "responses": root / "s.responses.jsonl", "neurons": root / "n.json", "model": model}


@pytest.fixture
def resolved(monkeypatch):
    """Counts lna.models.loading.resolve calls by model name."""
    from lna.models import loading

    calls = Counter()
    real = loading.resolve

    def counting(model, revision=None, **kw):
        calls[str(model)] += 1
        return real(model, revision, **kw)

    monkeypatch.setattr(loading, "resolve", counting)
    return calls


def _commands(m, out):
    return {
        "profile": ["profile", "-q", "--model", m["model"], "--dataset", m["data"], "--out", out / "p.zarr",
                    "--device", "cpu"],
        "ablate": ["ablate", "-q", "--model", m["model"], "--neurons", m["neurons"], "--responses", m["responses"],
                   "-o", out / "ab", "--device", "cpu"],
        "steer": ["steer", "-q", "--model", m["model"], "--neurons", m["neurons"], "--store", m["store"],
                  "--from", "en", "--to", "zh", "--dataset", m["data"], "-o", out / "st", "--max-new-tokens", "2",
                  "--strengths", "1", "--device", "cpu"],
        "eval": ["eval", "-q", "--model", m["model"], "--dataset", m["questions"], "-o", out / "ev",
                 "--max-new-tokens", "2", "--device", "cpu"],
        "align": ["align", "-q", "--model", m["model"], "--langs", "de", "--dataset", m["questions"], "-o",
                  out / "al", "--stop-after", "sample", "-n", "1", "--max-new-tokens", "2", "--device", "cpu",
                  "--backend", "hf"],
    }


@pytest.mark.parametrize("command", ["profile", "ablate", "steer", "eval", "align"])
def test_each_command_resolves_its_model_once(command, made, resolved, tmp_path):
    """Before open_runner, the model was resolved two to four times a run (the command, then
    make_runner, then the runner); each resolve of a hub model walks the cache, and of a
    built-in one may build it."""
    args = _commands(made, tmp_path)[command]
    assert _run(*args) == 0
    assert resolved[str(made["model"])] == 1, dict(resolved)


@pytest.mark.parametrize("command", ["profile", "ablate", "steer", "eval", "align"])
@pytest.mark.parametrize("option,value,words", [
    ("--device", "tpu", ["--device", "'tpu' is not a device lna runs on", "cpu, cuda or cuda:N"]),
    ("--dtype", "float64", ["--dtype", "'float64' is not one of"]),
    ("--token-budget", "0", ["--token-budget", "0 is not in the range x>=1"]),
    ("--limit", "-2", ["--limit", "-2 is not in the range x>=1"]),
    ("--backend", "tf", ["--backend", "'tf' is not one of"]),
])
def test_runner_options_are_checked_alike_in_every_command(command, option, value, words, made, tmp_path, capsys):
    args = _commands(made, tmp_path)[command]
    assert all(w in one_line_error(capsys, _run(*args, option, value)) for w in words)
    assert not any(tmp_path.iterdir())  # refused before anything is written


@pytest.mark.parametrize("command", ["profile", "eval", "align"])
@pytest.mark.parametrize("option,value,words", [
    ("--temperature", "-0.5", ["--temperature", "-0.5 is not in the range x>=0"]),
    ("--top-p", "0", ["--top-p", "0 is not in the range 0<x<=1"]),
    ("--top-p", "1.5", ["--top-p", "1.5 is not in the range 0<x<=1"]),
    ("--samples", "0", ["--samples", "0 is not in the range x>=1"]),
    ("--max-new-tokens", "0", ["--max-new-tokens", "0 is not in the range x>=1"]),
])
def test_sampling_options_are_checked_alike(command, option, value, words, made, tmp_path, capsys):
    args = _commands(made, tmp_path)[command]
    assert all(w in one_line_error(capsys, _run(*args, option, value)) for w in words)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("command", ["eval", "align"])
def test_eval_and_align_take_revision(command, made, tmp_path, capsys):
    """--revision is for hub models: given with a local folder it is refused in one line, as
    lna-profile refuses it (before, lna-eval and lna-align had no --revision)."""
    args = _commands(made, tmp_path)[command]
    err = one_line_error(capsys, _run(*args, "--revision", "main"))
    assert "--revision main" in err and "revisions are for hub models" in err, err


def test_every_command_declares_the_runner_options_alike():
    """Each RunnerOptions field a command takes on its command line (all but --model's
    required-ness and help, and profile's --vllm-compiled) has the same type, range, default
    and check in every command: one declaration, so they cannot drift apart again."""
    from dataclasses import fields

    from lna.runners.options import RunnerOptions

    def spec(p):
        return (type(p.type).__name__, repr(p.type), p.default, getattr(p.callback, "__qualname__", None),
                tuple(p.opts))

    wanted = {f.name for f in fields(RunnerOptions)} - {"model", "max_row_tokens", "vllm_compiled"}
    wanted |= {"limit", "quiet"}
    specs = {}
    for name in ("profile", "ablate", "steer", "eval", "align", "launch"):
        params = {p.name: p for p in cli._commands()[name].params}
        assert wanted <= set(params), (name, wanted - set(params))
        specs[name] = {k: spec(params[k]) for k in sorted(wanted)}
    first = specs["profile"]
    for name, s in specs.items():
        assert s == first, name
    assert first["device"][3] == "_device" and first["token_budget"][1] == "<IntRange x>=1>"


def test_options_extend_runner_options():
    from dataclasses import fields

    from lna.align.pipeline import Options as Align
    from lna.evaluation.eval import Options as Eval
    from lna.interventions.ablate import Options as Ablate
    from lna.interventions.steer.run import Options as Steer
    from lna.profiling.profile import Options as Profile
    from lna.runners.options import RunnerOptions

    runner = {f.name for f in fields(RunnerOptions)}
    for cls in (Profile, Ablate, Steer, Eval, Align):
        assert issubclass(cls, RunnerOptions) and runner <= {f.name for f in fields(cls)}
