"""One sampling step: lna's per-response sampler (lna.runners.row_sampler: transformers'
temperature and top-p warpers, then an inverse-CDF draw per row from its own uniforms) against
transformers' own step (the same warpers, softmax, one torch.multinomial over the batch from
the global generator), side by side, at the vocabularies of Mistral/Llama 2 (32,000), Qwen2
(151,936) and Llama 3 (128,256), for 1, 16 and 160 rows (a batch of 16 questions x 10
samples). Against a 7B forward step (milliseconds on a GPU, seconds on a CPU) either is small.

  python benches/bench_row_sampler.py [--device cuda]
Writes benches/results/row_sampler_<device>.json.
"""
import argparse
import contextlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args(argv)
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    from lna.runners.row_sampler import RowSampler

    temperature, top_p = 0.7, 0.95  # the study's
    warpers = [TemperatureLogitsWarper(temperature), TopPLogitsWarper(top_p)]

    def transformers_step(ids, scores):
        for warp in warpers:
            scores = warp(ids, scores)
        return torch.multinomial(torch.softmax(scores, dim=-1), 1)

    rows_out = []
    with common.one_core() if args.device == "cpu" else contextlib.nullcontext():
        info = common.machine(args.device, threads=1 if args.device == "cpu" else None)
        timer = common.Timer(args.device, reps=args.reps, warmup=2)
        for vocab in (32000, 128256, 151936):
            for rows in (1, 16, 160):
                gen = torch.Generator(device="cpu").manual_seed(vocab + rows)
                scores = (torch.randn(rows, vocab, generator=gen) * 4).to(args.device)
                ids = torch.zeros(rows, 8, dtype=torch.long, device=args.device)
                sampler = RowSampler(range(rows), 1, 8, temperature, top_p, args.device)
                ms_hf = timer(lambda: transformers_step(ids, scores.clone()))
                ms_lna = timer(lambda: sampler(ids, scores.clone()))
                rows_out.append({"vocab": vocab, "rows": rows, "ms_transformers": round(ms_hf, 4),
                                 "ms_lna_row_sampler": round(ms_lna, 4), "ratio": round(ms_lna / ms_hf, 3)})
                print(f"vocab {vocab:>7,} rows {rows:>4}: transformers {ms_hf:8.3f} ms, lna {ms_lna:8.3f} ms, "
                      f"{ms_lna / ms_hf:.2f}x", flush=True)
    path = common.write(common.results_name("row_sampler", args.device), {
        "bench": "one sampling step: lna.runners.row_sampler vs transformers' warpers + multinomial",
        "machine": info, "versions": common.versions(), "temperature": temperature, "top_p": top_p,
        "reps_median_of": args.reps, "rows": rows_out})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
