"""Shared test setup: Triton's CPU interpreter, the shared data folder, tiny models."""
import os
from pathlib import Path

# Must precede the import of any module defining @triton.jit kernels (docs/design.md, "Testing").
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LNA_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine two threads
    contend with other work (3-5x slower seen); results do not depend on it."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The study's data beside the checkout (../shared/data); tests skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set LNA_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Random-weight Llama and Mistral models (head_dim 32) with a byte tokenizer, on disk."""
    from lna.models.tiny import build_tiny

    root = tmp_path_factory.mktemp("models")
    return {arch: str(build_tiny(root / arch, arch, hidden=64, layers=3, intermediate=96, heads=2,
                                 kv_heads=1, seed=seed))
            for seed, arch in enumerate(["llama", "mistral"])}


def lazy_tiny_models(tmp_path_factory, folder: str, seed: int):
    """arch -> folder of its tiny model with random weights from `seed`, built on first use."""
    root, paths = tmp_path_factory.mktemp(folder), {}

    def get(arch):
        if arch not in paths:
            from lna.models.tiny import build_tiny

            paths[arch] = str(build_tiny(root / arch, arch, seed=seed))
        return paths[arch]
    return get


def random_samples(seed, languages, questions=9, vocab=259, max_prompt=40, max_response=50):
    """Samples with shared prompts, mixed lengths, several responses per prompt and languages."""
    import numpy as np

    from lna.inputs.samples import Sample

    rng = np.random.default_rng(seed)
    out = []
    for q in range(questions):
        prompt = tuple([1] + rng.integers(3, vocab, rng.integers(2, max_prompt)).tolist())
        lang = languages[q % len(languages)]
        for j in range(int(rng.integers(1, 5))):
            response = tuple(rng.integers(3, vocab, rng.integers(1, max_response)).tolist())
            out.append(Sample(f"q{q}/{j}", lang, prompt, response, group=f"q{q}"))
    return out


# -- helpers the test modules share (import them: `from conftest import write_jsonl`) ----------
# Verbatim short prompts in three languages, with responses: forward passes stay small.
SMALL_DATA = [
    {"lang": "en", "prompt": "Q: 2+3?\nA:", "responses": [" 2+3 = 5. The answer is 5.", " Five, since 2+3=5."]},
    {"lang": "en", "prompt": "Q: 7-4?\nA:", "responses": [" 7-4 = 3. The answer is 3."]},
    {"lang": "zh", "prompt": "问：2加3？\n答：", "responses": [" 2加3等于5。答案是5。", " 五"]},
    {"lang": "zh", "prompt": "问：7减4？\n答：", "responses": [" 7减4等于3。答案是3。"]},
    {"lang": "ja", "prompt": "問：2たす3？\n答：", "responses": [" 2たす3は5です。答えは5です。"]},
    {"lang": "ja", "prompt": "問：7ひく4？\n答：", "responses": [" 3です。"]},
]


def write_jsonl(path, records) -> Path:
    """`records` as a JSONL file (utf-8, one record a line; folders made); returns the path."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def profile_cli(*args) -> int:
    """lna-profile run in this process, quiet: its exit code."""
    from lna.cli import run
    from lna.cli.profile import profile

    return run(profile, "lna-profile", ["-q", *map(str, args)])


def profile_by_row(model, dataset, out, *args) -> int:
    """lna-profile with a token budget below every row, so one row a forward: a run split into
    shards, or stopped and resumed, does the same arithmetic as the whole run."""
    return profile_cli("--model", model, "--dataset", dataset, "--out", out, "--token-budget", "32", *args)


def eval_cli(*args) -> int:
    """lna-eval run in this process, quiet: its exit code."""
    from lna.cli import run
    from lna.cli.eval import eval_

    return run(eval_, "lna-eval", ["-q", *map(str, args)])


def one_line(result, *words) -> str:
    """A failed command's report: `result` (exit code, stdout, stderr) has a non-zero exit and
    exactly one line on stderr, no traceback, holding each of `words`. Returns the line."""
    rc, out, err = result
    assert rc not in (0, None), (rc, out, err)
    assert err.count("\n") == 1 and err.endswith("\n") and "Traceback" not in err, err
    for w in words:
        assert str(w) in err, (w, err)
    return err.strip()


def one_line_error(capsys, code) -> str:
    """one_line of a command run in this process (lna.cli.run), from its exit code and what
    it left on stderr: "PROG: error: ..."."""
    return one_line((code, "", capsys.readouterr().err), "error:")


def interrupt_after(monkeypatch, cls, method: str, after: int):
    """Ctrl-C inside a run: cls.method raises KeyboardInterrupt once `after` calls have
    returned. Returns a function that puts the real method back."""
    real, calls = getattr(cls, method), []

    def dying(self, *args, **kw):
        calls.append(1)
        if len(calls) > after:
            raise KeyboardInterrupt
        return real(self, *args, **kw)

    monkeypatch.setattr(cls, method, dying)
    return lambda: monkeypatch.setattr(cls, method, real)


def interrupt_counting(monkeypatch, after: int):
    """Ctrl-C during lna-profile: HFRunner.count raises KeyboardInterrupt once `after` calls
    (chunks) have returned. Returns a function that puts the real count back."""
    from lna.runners.hf import HFRunner

    return interrupt_after(monkeypatch, HFRunner, "count", after)
