"""lna-align end to end on CPU with tiny random models: align -> profile the base and the
checkpoints -> lna-compare --series; and the sample stage, resume and one-line errors."""
import json

import pytest

from align_tiny import build_tiny_nllb
from lna.core import jsonl
from lna.align.pipeline import Options, run as run_align
from lna.cli import run
from lna.cli.align import align
from lna.cli.compare import compare
from lna.cli.profile import profile
from lna.inputs.demo import records as demo_records
from lna.core.errors import LnaError


def dataset(path, n=4):
    """zh questions with three responses (right, wrong, right in other words) and en ones with two."""
    rows = []
    for rec in demo_records():
        if rec["lang"] in ("zh", "en") and rec["id"] < n:
            r, c = rec["responses"][0], rec["answer"]
            wrong = r.replace(c, str(int(c) + 1))
            other = f" 答案是{c}。" if rec["lang"] == "zh" else f" So it is {c}."
            rows.append({**rec, "responses": [r, wrong, other] if rec["lang"] == "zh" else [r, other]})
    path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows), encoding="utf-8")
    return rows


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    rows = dataset(root / "data.jsonl")
    nllb = build_tiny_nllb(root / "nllb", [r for x in rows for r in x["responses"]])
    return root, nllb


TRAIN = ["--steps", "2", "--save-every", "1", "--batch", "2", "--micro-batch", "1", "--lr", "5e-3",
         "--warmup-steps", "0", "--scheduler", "constant", "--dev-every", "0", "--eval-pairs", "0",
         "--lora-r", "4", "--lora-alpha", "8", "--device", "cpu", "-q"]


def test_align_profile_compare_series(setup, tiny_models, tmp_path):
    pytest.importorskip("trl", reason="the train stage needs the align extra: pip install 'lna[align]'")
    root, nllb = setup
    model, out = tiny_models["llama"], tmp_path / "align"
    args = ["--model", model, "--langs", "zh", "--pivot", "en", "--dataset", str(root / "data.jsonl"),
            "--scorer", nllb, "-o", str(out), *TRAIN]
    assert run(align, "lna-align", args) == 0
    scores = jsonl.read(out / "scores.jsonl", "scores", "")
    assert [r["key"] for r in scores] == [f"data/zh/{i}" for i in range(4)]
    assert all(len(r["responses"]) == 3 and len(r["references"]) == 2 for r in scores)
    pairs = jsonl.read(out / "pairs.jsonl", "pairs", "")
    assert pairs and all(p["split"] == "train" for p in pairs)
    steps = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert steps == ["step-1", "step-2"]

    stores = []
    for name, m in (("base", model), *((s, str(out / "checkpoints" / s)) for s in steps)):
        stores.append(str(tmp_path / f"{name}.zarr"))
        assert run(profile, "lna-profile", ["--model", m, "--langs", "all", "--dataset", "demo", "--limit", "3",
                                            "--backend", "hf", "--device", "cpu", "--out", stores[-1], "-q"]) == 0
    cmp = tmp_path / "cmp"
    assert run(compare, "lna-compare", [*stores, "--series", "--names", "base,1,2", "-o", str(cmp)]) == 0
    for f in ("series.csv", "series_specific.png", "series_related.png", "series_general.png", "series_totals.png",
              "layer_change.1.png", "models.csv"):
        assert (cmp / f).stat().st_size > 0, f

    # The checkpoint is a model for the other commands too.
    from lna.cli.ablate import ablate
    from lna.cli.eval import eval_
    from lna.cli.identify import identify

    step = str(out / "checkpoints" / "step-2")
    assert run(eval_, "lna-eval", ["--model", step, "--dataset", "demo", "--langs", "en,zh", "--limit", "1",
                                   "--max-new-tokens", "4", "--backend", "hf", "--device", "cpu",
                                   "-o", str(tmp_path / "eval"), "-q"]) == 0
    assert run(identify, "lna-identify", [stores[-1], "-o", str(tmp_path / "n.json")]) == 0
    assert run(ablate, "lna-ablate", ["--model", step, "--neurons", str(tmp_path / "n.json"), "--langs", "en,de",
                                      "--backend", "hf", "--device", "cpu", "-o", str(tmp_path / "abl"), "-q"]) == 0
    assert (tmp_path / "eval" / "accuracy.json").is_file() and (tmp_path / "abl" / "ppl.json").is_file()

    # A rerun finds every stage done: nothing is sampled, scored or trained again.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "pairs.jsonl"}
    assert run(align, "lna-align", args) == 0
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_sample_stage_samples_once_and_resumes(setup, tiny_models, tmp_path, monkeypatch):
    root, _ = setup
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"id": i, "lang": x, "query": f"{i} + 1 = ?", "answer": str(i + 1)}) + "\n"
                            for x in ("de", "en") for i in range(3)))
    o = Options(model=tiny_models["llama"], langs="de", out=str(tmp_path / "a"), dataset=str(data), samples=2,
                max_new_tokens=4, stop_after="sample", device="cpu", backend="hf", progress=False)
    assert run_align(o) == []
    recs = jsonl.read(tmp_path / "a" / "responses.jsonl", "responses", "")
    assert sorted(r["key"] for r in recs) == sorted(f"q/{x}/{i}" for x in ("de", "en") for i in range(3))
    assert all(len(r["responses"]) == 2 and all(len(t) <= 4 for t in r["response_ids"]) for r in recs)
    assert all(r["sampling"]["temperature"] == 0.8 and r["sampling"]["n"] == 2 for r in recs)

    def no_model(*a, **k):
        raise AssertionError("everything was sampled: the model must not load")

    monkeypatch.setattr("lna.runners.make_runner", no_model)
    assert run_align(o) == []
    assert jsonl.read(tmp_path / "a" / "responses.jsonl", "responses", "") == recs


@pytest.mark.parametrize("extra, message", [
    (["--langs", "en"], "only the pivot"),
    (["--langs", "zh", "--pairs", "PAIRS", "--stop-after", "score"], "replaces that stage"),
    (["--langs", "zh", "--pairs", "PAIRS"], "pairs records need split, prompt, chosen, rejected"),
    (["--langs", "zh", "--scores", "PAIRS"], "scores records need qid, prompt, answer, responses"),
    (["--langs", "zh", "--responses", "NORESP"], "has no responses"),
    (["--langs", "zh", "-o", "FILE"], "is not a folder"),
    (["--langs", "zh", "--batch", "3"], "multiple of --micro-batch"),
    (["--langs", "zh", "--scorer", "nobody/no-such-nllb"], "not in the local Hugging Face cache"),
])
def test_one_line_errors(setup, tiny_models, tmp_path, capsys, extra, message):
    root, _ = setup
    (tmp_path / "p.jsonl").write_text(json.dumps({"lang": "zh", "key": "x"}) + "\n")
    (tmp_path / "n.jsonl").write_text(json.dumps({"lang": "zh", "id": 0, "query": "q"}) + "\n"
                                      + json.dumps({"lang": "en", "id": 0, "query": "q"}) + "\n")
    (tmp_path / "file").write_text("x")
    subst = {"PAIRS": str(tmp_path / "p.jsonl"), "NORESP": str(tmp_path / "n.jsonl"), "FILE": str(tmp_path / "file")}
    args = ["--model", tiny_models["llama"], "--dataset", str(root / "data.jsonl"), "-o", str(tmp_path / "out"),
            "--device", "cpu", "-q", *[subst.get(a, a) for a in extra]]
    if "-o" in extra:
        args = args[:4] + args[6:]
    assert run(align, "lna-align", args) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_missing_align_extra_is_one_line(tiny_models, tmp_path, monkeypatch):
    import sys

    from lna.align.train import TrainSettings, train

    monkeypatch.setitem(sys.modules, "trl", None)  # import trl -> ImportError
    with pytest.raises(LnaError, match=r"pip install 'lna\[align\]'"):
        train(tiny_models["llama"], [{"split": "train", "prompt": "a", "chosen": "b", "rejected": "c"}], tmp_path,
              TrainSettings(), device="cpu")
