"""Counting while sampling (transformers backend and lna-profile) against force-decoding the
same sampled responses and the naive hook reference; EOS and max_new_tokens edge cases; the
store's record of how it counted; resume after an interruption and after a kill."""
import json

import numpy as np
import pytest
import torch

from conftest import interrupt_after, profile_cli
import naive
from lna.inputs import data as data_module, responses
from lna.cli import run
from lna.cli.merge import merge as merge_cli
from lna.inputs.samples import Sample
from lna.runners.decode_count import Tracker
from lna.storage.store import open_store

LANGS = ["en", "zh", "ja"]
# Of each cell's sum of |act|, as tests/test_steer_sums.py argues, but 10x its 1e-6: decoding
# computes each gate by another path (one token at a time over a KV cache), further from the
# one-sequence reference (measured up to 3.1e-6). One token in the wrong cell moves it by about
# 1e-3 here, still 100x this.
SUMS_TOLERANCE = 1e-5
EOS = [2] + list(range(3, 40))  # many end tokens: responses end at every point, some at once


def ends_often(path):
    """The model's generation_config.json names 38 EOS ids (as Llama 3's names several), so a
    random model ends about one response step in seven: empty, mid-way and at-limit ends."""
    from transformers import GenerationConfig

    GenerationConfig(bos_token_id=1, eos_token_id=EOS, pad_token_id=2).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from lna.models.tiny import build_tiny

    return ends_often(build_tiny(tmp_path_factory.mktemp("m") / "llama", "llama", hidden=64, layers=3,
                                 intermediate=96, heads=2, kv_heads=1, seed=5))


@pytest.fixture(scope="module")
def runner(model):
    from lna.runners.hf import HFRunner

    return HFRunner(model, token_budget=600)  # several generate batches, left padding in each


def prompts_and_langs(seed, count=9):
    rng = np.random.default_rng(seed)
    prompts = [[1] + rng.integers(40, 259, rng.integers(1, 18)).tolist() for _ in range(count)]
    return prompts, [LANGS[i % 3] for i in range(count)]


def as_samples(prompts, langs, responses):
    return [Sample(f"{i}/{j}", langs[i], tuple(p), tuple(r), group=str(i))
            for i, (p, rs) in enumerate(zip(prompts, responses)) for j, r in enumerate(rs) if r]


def test_decode_tracker_counts_fed_response_tokens_once():
    """A hand-made decoding: width-3 prompts (row 1 left-padded), limit 3 new tokens; row 0
    feeds 7, 8, 9 (and a 4th beyond the limit), row 1 feeds 5 then EOS 2 then padding."""
    from lna.runners.counting_mlp import CountingState

    state, counts = CountingState(), torch.zeros(1, 2, 4, dtype=torch.int64)
    tr = Tracker(state, counts, rows=[1, 0], width=3, max_new_tokens=3, eos={2}, layers=0)
    got = []
    for fed in ([[1, 40, 41], [2, 1, 50]], [[7], [5]], [[8], [2]], [[9], [2]], [[10], [2]]):
        tr.before(None, (), {"input_ids": torch.tensor(fed)})
        got.append(state.lang_ids.view(2, -1).tolist())
    assert got == [[[-1, -1, -1], [-1, -1, -1]], [[1], [0]], [[1], [-1]], [[1], [-1]], [[-1], [-1]]]
    tr.check([[7, 8, 9], [5]], "m")
    with pytest.raises(Exception, match="counted 3 tokens of a 2-token response"):
        tr.check([[7, 8], [5]], "m")
    with pytest.raises(Exception, match="or other tokens than it"):
        tr.check([[7, 8, 6], [5]], "m")


@pytest.mark.parametrize("temperature,n", [(1.0, 3), (0.0, 1)], ids=["sampled", "greedy"])
def test_counts_equal_force_decoding_the_same_responses(runner, model, temperature, n):
    prompts, langs = prompts_and_langs(1, count=12)
    kw = dict(n=n, temperature=temperature, top_p=0.95, max_new_tokens=12, seed=7)
    plain = runner.generate(prompts, **kw)
    responses, counts, tokens, sums, active = runner.generate_counting(prompts, langs, LANGS, sums=True, **kw)
    # one step more than asked, its token dropped: the kept tokens are what generate samples
    assert responses == plain
    again = runner.generate_counting(prompts, langs, LANGS, **kw)  # without sums: the same counts
    assert len(again) == 3 and again[0] == responses and np.array_equal(again[1], counts)
    lengths = [len(r) for rs in responses for r in rs]
    if temperature:  # every way a response can end happened, or the test proved less than it says
        assert 0 in lengths and 12 in lengths and any(0 < k < 12 for k in lengths)
    samples = as_samples(prompts, langs, responses)
    forced, forced_tokens = runner.count(samples, LANGS)
    assert np.array_equal(tokens, forced_tokens) and tokens.sum() == sum(lengths)
    ref, amb = naive.counts(model, samples, LANGS)
    # Exact, or flips of gates within 1e-5 of zero (KV-cached decoding sums in another order).
    diff = np.abs(counts - forced)
    assert (diff <= amb).all() and diff.sum() <= amb.sum()
    naive.assert_counts_equal(counts, ref, amb)
    # activation sums: within 1e-6 of each cell's sum of |act| from a float64 hook reference
    ref_sums, ref_active, scale = naive.activation_sums(model, samples, LANGS)
    assert (np.abs(sums - ref_sums) <= SUMS_TOLERANCE * scale).all()
    assert (np.abs(active - ref_active) <= SUMS_TOLERANCE * scale).all()


def test_no_eos_is_ever_counted_and_padding_rows_never(runner):
    """Rows that end early keep being fed (padding) while others decode: counting sees the
    ended rows' tokens and never counts them (a count of every fed token would be larger)."""
    prompts, langs = prompts_and_langs(2, count=6)
    state_ids = []
    real_before = Tracker.before

    def spy(self, module, args, kwargs):
        real_before(self, module, args, kwargs)
        ids = kwargs["input_ids"]
        state_ids.append((ids.clone(), self.state.lang_ids.view(ids.shape).clone()))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Tracker, "before", spy)
        responses, _, tokens = runner.generate_counting(prompts, langs, LANGS, n=2, temperature=1.0, top_p=1.0,
                                                        max_new_tokens=10, seed=3)
    fed_eos = sum(int(torch.isin(ids[:, -1:], torch.tensor(EOS)).sum()) for ids, _ in state_ids[1:])
    assert fed_eos > 0, "no row was fed an EOS or padding: the test proved nothing"
    for ids, lang in state_ids[1:]:  # decoding steps: an end token is never counted
        assert not (torch.isin(ids, torch.tensor(EOS)) & (lang >= 0)).any()
    assert tokens.sum() == sum(len(r) for rs in responses for r in rs)


# -- lna-profile ------------------------------------------------------------------------------

def questions(path, count=7, first=0):
    recs = [{"lang": ["en", "zh", "sw"][i % 3], "query": f"What is {i} + {i + 2}?"}
            for i in range(first, first + count)]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return str(path)


def read_responses(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def small_batches(monkeypatch):
    monkeypatch.setattr(responses, "BATCH_QUESTIONS", 2)  # several seeded batches, several checkpoints


def test_profile_counts_while_sampling_as_force_decoding_would(model, tmp_path, small_batches):
    data = questions(tmp_path / "q.jsonl")
    args = ["--model", model, "--dataset", data, "-n", "2", "--max-new-tokens", "10", "--checkpoint-every", "0"]
    assert profile_cli(*args, "--out", str(tmp_path / "one.zarr")) == 0
    assert profile_cli(*args, "--out", str(tmp_path / "two.zarr"), "--force-decode") == 0
    one, two = open_store(tmp_path / "one.zarr", allow_partial=False), open_store(tmp_path / "two.zarr")
    assert one.meta["counted_during"] == "sampling" and two.meta["counted_during"] == "force-decoding"
    # the same responses, token for token: a later force-decoding or ablation uses exactly these
    a, b = read_responses(tmp_path / "one.responses.jsonl"), read_responses(tmp_path / "two.responses.jsonl")
    assert [r["response_ids"] for r in a] == [r["response_ids"] for r in b]
    assert np.array_equal(one.tokens, two.tokens)
    samples = responses.samples(data_module.load(str(tmp_path / "one.responses.jsonl"))[1])
    ref, amb = naive.counts(model, samples, one.languages)
    assert (np.abs(one.counts - two.counts) <= amb).all()
    naive.assert_counts_equal(one.counts, ref, amb)
    _, _, scale = naive.activation_sums(model, samples, one.languages)  # sums taken while sampling too
    assert one.has_sums and (np.abs(one.sums - two.sums) <= SUMS_TOLERANCE * scale).all()
    for lang in one.languages:  # the same samples by content: the two cannot be merged (double counting)
        assert np.array_equal(np.sort(one.samples[lang].ids), np.sort(two.samples[lang].ids))
    assert run(merge_cli, "lna merge", [str(tmp_path / "one.zarr"), str(tmp_path / "two.zarr"),
                                        "-o", str(tmp_path / "both.zarr")]) == 1
    # other questions counted the other way merge, and the sum says it was counted both ways
    other = questions(tmp_path / "more.jsonl", count=6, first=20)  # 4 responses a language: not all empty
    assert profile_cli("--model", model, "--dataset", other, "-n", "2", "--max-new-tokens", "10",
                       "--out", str(tmp_path / "three.zarr"), "--force-decode") == 0
    assert run(merge_cli, "lna merge", [str(tmp_path / "one.zarr"), str(tmp_path / "three.zarr"),
                                        "-o", str(tmp_path / "sum.zarr")]) == 0
    assert open_store(tmp_path / "sum.zarr").meta["counted_during"] == "sampling+force-decoding"


def test_interrupted_count_while_sampling_resumes_without_double_counting(model, tmp_path, small_batches,
                                                                          monkeypatch):
    """Ctrl-C after two sampled batches (checkpointed), and a kill that lost the store's last
    checkpoint while the responses file kept its batches: the reruns sample the rest (the same
    responses), count each sample once, and end where an uninterrupted run ends."""
    from lna.profiling import profile as profile_module
    from lna.runners.hf import HFRunner

    data = questions(tmp_path / "q.jsonl")
    args = ["--model", model, "--dataset", data, "-n", "2", "--max-new-tokens", "10"]
    assert profile_cli(*args, "--out", str(tmp_path / "whole.zarr")) == 0
    whole = open_store(tmp_path / "whole.zarr")
    # 1. Ctrl-C: the finished batches are saved with their counts
    resume = interrupt_after(monkeypatch, HFRunner, "generate_counting", after=2)
    cut = tmp_path / "cut.zarr"
    assert profile_cli(*args, "--out", str(cut), "--checkpoint-every", "1000") == 130
    partial = open_store(cut)
    assert not partial.complete and 0 < partial.tokens.sum() < whole.tokens.sum()
    assert len(read_responses(tmp_path / "cut.responses.jsonl")) == 4  # two batches of two questions
    resume()
    assert profile_cli(*args, "--out", str(cut)) == 0
    again = open_store(cut, allow_partial=False)
    assert np.array_equal(again.counts, whole.counts) and np.array_equal(again.tokens, whole.tokens)
    assert again.meta["counted_during"] == "sampling"

    # 2. a kill: nothing saved at the stop (as after SIGKILL), the file holds three batches
    interrupt_after(monkeypatch, HFRunner, "generate_counting", after=3)
    monkeypatch.setattr(profile_module, "_save", lambda store, out, complete=False: None)
    killed = tmp_path / "killed.zarr"
    assert profile_cli(*args, "--out", str(killed)) == 130
    assert not killed.exists() and len(read_responses(tmp_path / "killed.responses.jsonl")) == 6
    monkeypatch.undo()
    monkeypatch.setattr(responses, "BATCH_QUESTIONS", 2)
    assert profile_cli(*args, "--out", str(killed)) == 0  # kept batches force-decoded, the rest while sampling
    done = open_store(killed, allow_partial=False)
    assert done.meta["counted_during"] == "sampling+force-decoding"
    assert np.array_equal(done.tokens, whole.tokens)
    for lang in whole.languages:
        assert np.array_equal(np.sort(done.samples[lang].ids), np.sort(whole.samples[lang].ids))
    assert read_responses(tmp_path / "killed.responses.jsonl") == read_responses(tmp_path / "whole.responses.jsonl")
    samples = responses.samples(data_module.load(str(tmp_path / "whole.responses.jsonl"))[1])
    _, amb = naive.counts(model, samples, whole.languages)
    assert (np.abs(done.counts - whole.counts) <= amb).all()


def test_a_store_whose_responses_file_was_lost_samples_first(model, tmp_path, small_batches):
    """A store whose samples the responses file lacks (deleted): lna samples first, then the
    ledger decides; the same responses come back (seeded), so nothing is counted twice."""
    data = questions(tmp_path / "q.jsonl", count=4)
    args = ["--model", model, "--dataset", data, "-n", "2", "--max-new-tokens", "10", "--out", str(tmp_path / "s.zarr")]
    assert profile_cli(*args) == 0
    first = open_store(tmp_path / "s.zarr")
    (tmp_path / "s.responses.jsonl").unlink()
    assert profile_cli(*args) == 0
    again = open_store(tmp_path / "s.zarr")
    assert np.array_equal(again.counts, first.counts) and np.array_equal(again.tokens, first.tokens)
