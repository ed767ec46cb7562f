"""Fixtures of the fault tests: the `lna` runner, a tiny model, and what lna made of DATA."""
from pathlib import Path

import pytest

from faults.faultkit import DATA, _entry, write_jsonl
from lna import cli


@pytest.fixture
def lna(capsys):
    """lna(command, *args) -> (exit status, stdout, stderr), through the console entry point."""
    def call(name, *args):
        with pytest.raises(SystemExit) as done:
            _entry(name)([str(a) for a in args])
        out, err = capsys.readouterr()
        return done.value.code, out, err
    return call



@pytest.fixture(scope="session")
def model(tiny_models):
    return Path(tiny_models["llama"])


@pytest.fixture(scope="session")
def made(tmp_path_factory, model):
    """A dataset, the count store and responses lna-profile made of it, and neuron sets."""
    root = tmp_path_factory.mktemp("made")
    data = write_jsonl(root / "d.jsonl", DATA)
    store = root / "s.zarr"
    assert cli.run(cli._commands()["profile"], "lna-profile",
                   ["-q", "--model", str(model), "--dataset", str(data), "--out", str(store)]) == 0
    assert cli.run(cli._commands()["identify"], "lna-identify",
                   [str(store), "-o", str(root / "n.json"), "--top-rate", "0.05"]) == 0
    return {"root": root, "data": data, "store": store, "responses": root / "s.responses.jsonl",
            "neurons": root / "n.json"}

