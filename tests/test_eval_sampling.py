"""lna-eval with a model: greedy decoding equals a plain argmax loop, end to end on the built-in
tiny model and the demo data, resume after an interruption, refusal to mix runs."""
import json

import pytest
import torch

from conftest import eval_cli


def argmax_continuation(model_dir, prompt_ids, steps, eos=2):
    """Greedy decoding the plain way: an unmodified transformers model, one token at a time."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids, out = list(prompt_ids), []
    with torch.no_grad():
        for _ in range(steps):
            token = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            if token == eos:
                break
            out.append(token)
            ids.append(token)
    return out


@pytest.fixture(scope="module")
def sampling_defaults_model(tmp_path_factory):
    """A tiny model whose generation_config.json asks for sampling and a repetition penalty,
    as released checkpoints often do: greedy decoding must not pick them up."""
    from transformers import GenerationConfig

    from lna.models.tiny import build_tiny

    path = build_tiny(tmp_path_factory.mktemp("m") / "llama", "llama", hidden=64, layers=2, intermediate=96, heads=2,
                      kv_heads=1, seed=3)
    GenerationConfig(bos_token_id=1, eos_token_id=2, do_sample=True, temperature=0.6, top_p=0.9, top_k=5,
                     repetition_penalty=1.3).save_pretrained(path)
    return str(path)


def test_greedy_is_argmax_whatever_the_models_generation_config(sampling_defaults_model):
    from lna.runners.hf import HFRunner

    runner = HFRunner(sampling_defaults_model, token_budget=512)  # all prompts in one left-padded batch
    prompts = [runner.tokenizer(t)["input_ids"] for t in ("What is 2+3?", "Combien font sept moins quatre ?", "ab")]
    got = runner.generate(prompts, n=1, temperature=0, top_p=0.95, max_new_tokens=12, seed=0)
    assert got == [[argmax_continuation(sampling_defaults_model, p, 12)] for p in prompts]
    with pytest.raises(Exception, match="greedy decoding"):
        runner.generate(prompts, n=2, temperature=0, top_p=1.0, max_new_tokens=4, seed=0)


def test_end_to_end_tiny_model_on_demo(tmp_path, monkeypatch):
    """docs/eval.md's demo: the built-in random model answers the demo's questions (its own
    answers, not the demo's worked ones) and scores about 0."""
    monkeypatch.setenv("LNA_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "ev"
    assert eval_cli("--model", "lna:tiny-llama", "--dataset", "demo", "--limit", "2", "--max-new-tokens", "8",
                    "-o", str(out)) == 0
    assert {p.name for p in out.iterdir()} == {"accuracy.json", "accuracy.csv", "accuracy.md", "accuracy.png",
                                               "verdicts.jsonl", "responses.jsonl", "run.json"}
    result = json.loads((out / "accuracy.json").read_text(encoding="utf-8"))
    assert result["languages"] == ["bn", "th", "sw", "ja", "zh", "ru", "de", "es", "fr", "en"]
    assert result["samples"] == {lang: 2 for lang in result["languages"]}
    assert result["sampling"] == {"n": 1, "temperature": 0.0, "top_p": 1.0, "max_new_tokens": 8, "seed": 0}
    assert result["average"] <= 0.1  # random weights: a right last number would be chance
    header = (out / "accuracy.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header == "model,bn,th,sw,ja,zh,ru,de,es,fr,en,Avg."
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    # the scored text is the decoded sampled tokens, which are the greedy continuation
    from lna.models.loading import resolve
    from lna.models.tiny import byte_tokenizer

    tok = byte_tokenizer()
    recs = [json.loads(line) for line in (out / "responses.jsonl").read_text(encoding="utf-8").splitlines()]
    verdicts = [json.loads(line) for line in (out / "verdicts.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(recs) == len(verdicts) == 20
    by_key = {v["key"]: v for v in verdicts}
    for rec in recs:
        assert by_key[rec["key"]]["response"] == rec["responses"][0] == tok.decode(rec["response_ids"][0], skip_special_tokens=True)
        assert "The answer is" not in rec["responses"][0]  # not the demo's worked answer
    model_dir = resolve("lna:tiny-llama").path
    for rec in recs[:: 10]:
        assert rec["response_ids"][0] == argmax_continuation(model_dir, rec["prompt_ids"], 8)


def test_interrupted_sampling_resumes_to_the_same_result(tiny_models, tmp_path, monkeypatch):
    from lna.runners.hf import HFRunner

    args = ["--model", tiny_models["llama"], "--dataset", "demo", "--limit", "2", "--max-new-tokens", "6"]
    assert eval_cli(*args, "-o", str(tmp_path / "whole")) == 0

    real, calls, kill = HFRunner.generate, [], [True]

    def dying(self, prompts, **kw):  # killed during the second batch of questions
        calls.append(len(prompts))
        if kill[0] and len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, prompts, **kw)

    monkeypatch.setattr(HFRunner, "generate", dying)
    cut = tmp_path / "cut"
    assert eval_cli(*args, "-o", str(cut)) == 130
    assert len((cut / "responses.jsonl").read_text().splitlines()) == 8 and not (cut / "accuracy.json").exists()
    calls.clear()
    kill[0] = False
    assert eval_cli(*args, "-o", str(cut)) == 0
    assert calls == [8, 4]  # only the batches not written yet
    for name in ("responses.jsonl", "verdicts.jsonl", "accuracy.csv"):
        assert (cut / name).read_text() == (tmp_path / "whole" / name).read_text(), name
    calls.clear()
    assert eval_cli(*args, "-o", str(cut)) == 0 and calls == []  # a finished run samples nothing


def test_a_folder_of_another_run_is_refused(tiny_models, tmp_path, capsys):
    args = ["--dataset", "demo", "--limit", "1", "--langs", "en,zh", "-o", str(tmp_path / "ev")]
    assert eval_cli("--model", tiny_models["llama"], "--max-new-tokens", "4", *args) == 0
    before = (tmp_path / "ev" / "responses.jsonl").read_bytes()
    capsys.readouterr()
    assert eval_cli("--model", tiny_models["mistral"], "--max-new-tokens", "4", *args) == 1
    err = capsys.readouterr().err
    assert "holds responses of another run" in err and "model" in err and err.count("\n") == 1
    assert eval_cli("--model", tiny_models["llama"], "--max-new-tokens", "5", *args) == 1
    assert "sampled with" in capsys.readouterr().err
    assert (tmp_path / "ev" / "responses.jsonl").read_bytes() == before


def test_the_bar_moves_at_every_decoding_step_and_batches_are_even(tiny_models, tmp_path, monkeypatch):
    """The answer bar moves while a batch generates (not once per 8 questions), ends exactly at
    the number of questions, and 8 prompts over a budget of 6 go as 4 + 4, not 6 + 2."""
    from lna.inputs import responses
    from lna.runners.hf import HFRunner

    runner = HFRunner(tiny_models["llama"], token_budget=6 * 20)
    batches, real = [], runner.model.generate

    def generate(*args, **kw):
        batches.append(len(kw["input_ids"]))
        return real(*args, **kw)

    monkeypatch.setattr(runner.model, "generate", generate)
    prompts = [[1] + [5 + q] * (2 + q % 3) for q in range(8)]  # 3-5 tokens: 6 per batch at 5 + 15
    steps = []
    got = runner.generate(prompts, n=1, temperature=0, top_p=1.0, max_new_tokens=15, seed=0, progress=steps.append)
    assert batches == [4, 4]
    assert len(steps) >= 2 * 10 and abs(sum(steps) - 8) < 1e-9  # per step, every prompt accounted once
    assert got == runner.generate(prompts, n=1, temperature=0, top_p=1.0, max_new_tokens=15, seed=0)

    class CountingBar:
        def __init__(self, total):
            self.updates = []

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def update(self, n):
            self.updates.append(n)

    bars = []
    from lna.core import config
    from lna.inputs import data

    _, questions = data.load("demo", "en", limit=3)
    questions = [q.__class__(q.key, q.lang, q.query, q.answer) for q in questions]
    template = config.template_for(tiny_models["llama"], "plain")[1]
    responses.prepare(questions, runner.tokenizer, template, tmp_path / "r.jsonl", runner=runner, n=1,
                      temperature=0, max_new_tokens=10, progress=lambda total: bars.append(CountingBar(total)) or bars[-1])
    assert len(bars[0].updates) > 3 and abs(sum(bars[0].updates) - 3) < 1e-9


def test_eval_answers_eight_questions_per_generate_call_on_cpu(tiny_models, tmp_path, monkeypatch):
    """lna-eval's greedy answers go 8 questions to a generate call (its batch of questions) on the
    CPU too: under the runners' CPU force-decoding budget (2048 tokens) long answers went a few
    at a time (one at its default 1024 new tokens); a --token-budget the user gives still rules."""
    from transformers import GenerationMixin

    from lna.evaluation import eval as ev

    calls = []
    real = GenerationMixin.generate

    def generate(self, *args, **kw):
        calls.append(tuple(kw["input_ids"].shape))
        return real(self, *args, **kw)

    monkeypatch.setattr(GenerationMixin, "generate", generate)
    args = ("--model", tiny_models["llama"], "--dataset", "demo", "--langs", "en", "--limit", "8", "--template",
            "plain", "--max-new-tokens", "300", "--device", "cpu")
    assert eval_cli(*args, "-o", tmp_path / "default") == 0
    width = max(w for _, w in calls)
    assert [rows for rows, _ in calls] == [8]
    assert 2048 // (width + 300) < 8 <= ev.GENERATE_BUDGET // (width + 300)  # the CPU default split them
    calls.clear()
    budget = 3 * (width + 300)  # three prompts' worth: 8 go as 3 + 3 + 2
    assert eval_cli(*args, "--token-budget", budget, "-o", tmp_path / "given") == 0
    assert [rows for rows, _ in calls] == [3, 3, 2]
    first = [json.loads(line)["response_ids"] for line in (tmp_path / "default" / "responses.jsonl").open()]
    again = [json.loads(line)["response_ids"] for line in (tmp_path / "given" / "responses.jsonl").open()]
    assert len(first) == 8 and all(len(r[0]) for r in first)
    assert first == again  # the same greedy answers, whatever the batches
