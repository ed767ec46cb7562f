"""lna-eval's greedy answers against plain transformers `generate`, in generated tokens/s.

The workload: MGSM questions (../shared/data/mgsm) in a few languages, answered greedily
with a small --max-new-tokens, as lna-eval answers them: `lna.inputs.responses.prepare`
through the runner `open_runner` opens with lna-eval's defaults (its batches: at most
BATCH_QUESTIONS questions, as many as lna's generation token budget lets in). Against:
- `plain`: transformers' `generate` on a plainly loaded model, as a competent user batches it
  (left padding through the tokenizer, the same prompts in the same batches, the same
  max_new_tokens, do_sample=False);
- `plain_b1`: the same one question at a time;
- `lna_b1`: lna-eval's answering one question per generate call, as it split them on a CPU
  before d9e08ba (its default 1024 new tokens under the runners' 2048-token CPU budget).
Before any timing, lna's answers are checked token for token against plain generate's at the
same batches (lna against plain, lna_b1 against plain_b1; else the bench stops); how many
answers batching changed (plain against plain_b1: near-ties may flip) is reported.
The variants then run in alternation, round by round (rotated order), in one process pinned
to one core (benches/common.py one_core). Reported per variant: seconds (wall and the
process's CPU time: on a shared, loaded machine the CPU time is the steadier figure),
generated tokens/s (tokens kept: up to and without EOS, the same for every variant), medians
over the rounds, and the load average at each timing.

Model: bench_peers' random-weight Llama with SmolLM-135M's shape (benches/bench_peers_setup.py;
built once, offline). Random weights seldom say EOS, so every row runs max_new_tokens.

  python benches/bench_eval_generate.py                       # 3 languages x 4 questions, 32 new tokens
  python benches/bench_eval_generate.py --langs en --questions 2 --rounds 1   # smoke
Writes benches/results/eval_generate_cpu.json (--results DIR for another folder).
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402
import bench_peers_setup  # noqa: E402

MGSM = HERE.parents[1] / "shared" / "data" / "mgsm"


def lna_opened(model: str, device: str):
    """The runner lna-eval opens (its defaults: token budget, dtype, template)."""
    from lna.evaluation import eval as ev

    return ev.open_model(ev.Options(model=model, out="unused", device=device))


def questions_of(opened, langs, per_lang: int):
    """MGSM questions with lna's prompt token ids (as lna-eval renders and tokenizes them)."""
    from lna.inputs import data, responses

    _, qs = data.load(str(MGSM), ",".join(langs), limit=per_lang)
    with tempfile.TemporaryDirectory() as tmp:
        plan = responses.plan(qs, opened.runner.tokenizer, opened.template, Path(tmp) / "r.jsonl", n=1,
                              temperature=0.0, top_p=1.0, max_new_tokens=1, seed=0)
    return plan.questions


def run_lna(opened, questions, max_new_tokens: int, one_at_a_time: bool = False) -> list:
    """lna-eval's answering: responses.prepare into a fresh responses file, greedy.
    one_at_a_time: one question per generate call, as lna-eval split them on a CPU before
    (under the runners' 2048-token CPU budget at its default 1024 new tokens)."""
    from dataclasses import replace

    from lna.inputs import responses

    budget = opened.runner.token_budget
    if one_at_a_time:
        opened.runner.token_budget = 1
    fresh = [replace(q, response_ids=None, responses=[]) for q in questions]
    with tempfile.TemporaryDirectory() as tmp:
        out = responses.prepare(fresh, opened.runner.tokenizer, opened.template, Path(tmp) / "responses.jsonl",
                                runner=opened.runner, n=1, temperature=0.0, top_p=1.0,
                                max_new_tokens=max_new_tokens, seed=0)
    opened.runner.token_budget = budget
    return [list(q.response_ids[0]) for q in out]


class Plain:
    """transformers as a user would run it: the model loaded plainly, generate() batched."""

    def __init__(self, model: str):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(model)
        self.tok.padding_side = "left"
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
        eos = self.model.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos])
        self.pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else min(self.eos)
        self.tok.pad_token_id = self.pad

    def __call__(self, prompts: list, batch: int, max_new_tokens: int) -> list:
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(prompts), batch):
                enc = self.tok.pad({"input_ids": prompts[start:start + batch]}, padding=True, return_tensors="pt")
                gen = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                          pad_token_id=self.pad)
                for row in gen[:, enc["input_ids"].shape[1]:].tolist():
                    cut = next((i for i, t in enumerate(row) if t in self.eos), len(row))
                    out.append(row[:cut])
        return out


def lna_batches(runner, prompts, max_new_tokens: int) -> list:
    """The generate batch sizes lna uses for these prompts (its batches of questions, each
    split under the token budget as HFRunner._generate splits it)."""
    from lna.inputs.responses import BATCH_QUESTIONS

    sizes = []
    for start in range(0, len(prompts), BATCH_QUESTIONS):
        chunk = prompts[start:start + BATCH_QUESTIONS]
        per = max(1, runner.token_budget // (max(len(p) for p in chunk) + max_new_tokens))
        per = -(-len(chunk) // -(-len(chunk) // per))
        sizes += [min(per, len(chunk) - s) for s in range(0, len(chunk), per)]
    return sizes


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder (default: bench_peers' SmolLM-135M shape, built once)")
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "lna_peers"))
    ap.add_argument("--langs", default="en,de,zh")
    ap.add_argument("--questions", type=int, default=4, help="questions per language")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--results", default=None, help="results folder (default benches/results)")
    opts = ap.parse_args(argv)
    import torch

    from lna.inputs.responses import BATCH_QUESTIONS

    model = opts.model or str(bench_peers_setup.build_model(Path(opts.cache) / "smollm-135m-float32", "smollm-135m",
                                                             MGSM))
    langs = opts.langs.split(",")
    with common.one_core():
        opened = lna_opened(model, "cpu")
        torch.set_num_threads(1)  # opening the runner fits threads to the load; the bench pins one
        questions = questions_of(opened, langs, opts.questions)
        prompts = [list(q.prompt_ids) for q in questions]
        plain = Plain(model)
        n_new = opts.max_new_tokens
        variants = {
            "lna": lambda: run_lna(opened, questions, n_new),
            "lna_b1": lambda: run_lna(opened, questions, n_new, one_at_a_time=True),
            "plain": lambda: plain(prompts, BATCH_QUESTIONS, n_new),
            "plain_b1": lambda: plain(prompts, 1, n_new),
        }
        # correctness first: lna's greedy answers are plain generate's, token for token
        answers = {name: fn() for name, fn in variants.items()}
        if answers["lna"] != answers["plain"] or answers["lna_b1"] != answers["plain_b1"]:
            bad = [i for i in range(len(prompts)) if answers["lna"][i] != answers["plain"][i]
                   or answers["lna_b1"][i] != answers["plain_b1"][i]]
            raise SystemExit(f"lna's answers differ from plain generate's at the same batches in {len(bad)} of "
                             f"{len(prompts)} questions (first: {questions[bad[0]].key}); not timing")
        b1_agree = sum(a == b for a, b in zip(answers["plain_b1"], answers["plain"]))
        tokens = {name: sum(len(a) for a in ans) for name, ans in answers.items()}
        times = {name: [] for name in variants}
        cpu = {name: [] for name in variants}
        loads = []
        order = list(variants)
        for r in range(opts.rounds):
            for name in order[r % len(order):] + order[:r % len(order)]:
                c, t = time.process_time(), time.perf_counter()
                variants[name]()
                times[name].append(time.perf_counter() - t)
                cpu[name].append(time.process_time() - c)
                loads.append(common.load_average()[0])
            print(f"round {r + 1}: " + ", ".join(f"{n} {times[n][-1]:.2f} s ({cpu[n][-1]:.2f} s CPU)"
                                                 for n in variants), flush=True)
        mach = common.machine("cpu", threads=1)
    result = {}
    for name in variants:
        med, med_cpu = statistics.median(times[name]), statistics.median(cpu[name])
        result[name] = {"seconds": times[name], "cpu_seconds": cpu[name], "median_s": med, "median_cpu_s": med_cpu,
                        "generated_tokens": tokens[name], "tokens_per_s": tokens[name] / med,
                        "tokens_per_cpu_s": tokens[name] / med_cpu}
    for name in variants:
        result[name]["ratio_to_lna"] = result[name]["tokens_per_s"] / result["lna"]["tokens_per_s"]
        result[name]["cpu_ratio_to_lna"] = result[name]["tokens_per_cpu_s"] / result["lna"]["tokens_per_cpu_s"]
    payload = {
        "machine": mach, "versions": common.versions(),
        "model": {"path": model, "shape": "smollm-135m" if opts.model is None else None,
                  "layers": opened.info.layers, "neurons": opened.info.neurons},
        "workload": {"data": bench_peers_setup.data_source(MGSM), "langs": langs, "questions": len(prompts),
                     "max_new_tokens": n_new, "greedy": True, "template": opened.template_name,
                     "prompt_tokens_mean": statistics.mean(len(p) for p in prompts),
                     "lna_token_budget": opened.runner.token_budget,
                     "lna_batch_sizes": lna_batches(opened.runner, prompts, n_new),
                     "lna_batch_sizes_at_eval_default_1024": lna_batches(opened.runner, prompts, 1024),
                     "plain_batch": BATCH_QUESTIONS},
        "check": {"lna_equals_plain": True, "lna_b1_equals_plain_b1": True,
                  "plain_b1_equal_to_plain": b1_agree, "questions": len(prompts)},
        "rounds": opts.rounds, "load_average_per_timing": loads, "variants": result,
    }
    path = common.write(common.results_name("eval_generate", "cpu"), payload,
                        [opts.results] if opts.results else None)
    for name, r in result.items():
        print(f"{name:9s} {r['median_s']:7.2f} s  {r['tokens_per_s']:6.1f} tok/s  x{r['ratio_to_lna']:.2f}   "
              f"CPU {r['median_cpu_s']:7.2f} s  {r['tokens_per_cpu_s']:6.1f} tok/s  x{r['cpu_ratio_to_lna']:.2f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
