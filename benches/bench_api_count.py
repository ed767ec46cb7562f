"""lna.count's cost: a user's own generate and forward inside `with lna.count(...)` against the
same calls without it, and against counting with Python forward hooks on every gate
projection (the research scripts' way), side by side in one run on a random-weight
Mistral-architecture model built in memory (benches/bench_profile.CONFIGS):
- generate_plain / generate_count / generate_hooks: greedy model.generate of a left-padded
  batch (lna.count with generated=True: the fed-back tokens, up to EOS);
- forward_plain / forward_count / forward_hooks: one no-grad forward of a [batch, seq] batch.
Checks that counting changes no output token and that lna.count's counts equal the hooks'.

  python benches/bench_api_count.py [--model small] [--batch 8] [--new-tokens 48] [--seq 256]
Writes benches/results/api_count_<device>.json.
"""
import argparse
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_profile  # noqa: E402
import common  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="small", choices=list(bench_profile.CONFIGS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats, best kept")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    with common.one_core():
        run(args)


def run(args):
    import numpy as np
    import torch

    import lna

    device = args.device
    net, _ = bench_profile.build(args.model, device, torch.float32)
    net.generation_config.eos_token_id = 2
    vocab = bench_profile.CONFIGS[args.model]["vocab_size"]
    rng = np.random.default_rng(0)
    B, S, K = args.batch, args.seq, args.new_tokens
    lens = rng.integers(S // 4, S // 2, B)
    width = int(lens.max())
    ids = torch.full((B, width), 2, dtype=torch.long)
    attn = torch.zeros(B, width, dtype=torch.long)
    for r, n in enumerate(lens):
        ids[r, width - n:] = torch.from_numpy(rng.integers(3, vocab, n))
        attn[r, width - n:] = 1
    ids, attn = ids.to(device), attn.to(device)
    fwd = torch.from_numpy(rng.integers(3, vocab, (B, S))).to(device)
    langs = ["en", "zh"]
    rows = [langs[r % 2] for r in range(B)]
    row_k = torch.tensor([r % 2 for r in range(B)], device=device)
    L, I = len(net.model.layers), bench_profile.CONFIGS[args.model]["intermediate_size"]
    gen = dict(input_ids=ids, attention_mask=attn, max_new_tokens=K, do_sample=False, pad_token_id=2)
    results = {}

    def generate_plain():
        results["generate_plain"] = net.generate(**gen)

    def generate_count():
        with lna.count(net, langs) as c, c.language(rows, generated=True):
            results["generate_count"] = net.generate(**gen)
        results["generate_count_counts"], results["generate_count_tokens"] = c.counts, int(c.tokens.sum())

    def hooked(fn, start_after_prefill):
        counts = torch.zeros(L, 2, I, dtype=torch.int64, device=device)
        calls = [0]

        def hook(li):
            def f(module, inputs, out):
                if li == 0:
                    calls[0] += 1
                if start_after_prefill and calls[0] == 1:
                    return  # the prompt: not counted (a fed token's EOS cut is not modelled here)
                g = out > 0
                for k in range(2):
                    counts[li, k] += g[row_k == k].sum((0, 1))
            return f

        hs = [layer.mlp.gate_proj.register_forward_hook(hook(i)) for i, layer in enumerate(net.model.layers)]
        try:
            out = fn()
        finally:
            for h in hs:
                h.remove()
        return out, counts.cpu().numpy()

    def generate_hooks():
        results["generate_hooks"], results["generate_hooks_counts"] = hooked(lambda: net.generate(**gen), True)

    def forward_plain():
        with torch.no_grad():
            net(input_ids=fwd)

    def forward_count():
        with lna.count(net, langs) as c, torch.no_grad(), c.language(rows):
            net(input_ids=fwd)
        results["forward_count_counts"] = c.counts

    def forward_hooks():
        def go():
            with torch.no_grad():
                return net(input_ids=fwd)
        _, results["forward_hooks_counts"] = hooked(go, False)

    fns = {"generate_plain": generate_plain, "generate_count": generate_count, "generate_hooks": generate_hooks,
           "forward_plain": forward_plain, "forward_count": forward_count, "forward_hooks": forward_hooks}
    seconds = {}
    for _ in range(args.repeats):
        for name, fn in fns.items():
            common.sync(device)
            t = time.perf_counter()
            fn()
            common.sync(device)
            seconds[name] = min(seconds.get(name, float("inf")), time.perf_counter() - t)
    same_tokens = bool(torch.equal(results["generate_plain"], results["generate_count"]))
    no_eos = not (results["generate_plain"][:, width:width + K - 1] == 2).any().item()
    agreement = {"generate_tokens_unchanged_by_counting": same_tokens,
                 "forward_counts_equal_hooks": bool(np.array_equal(results["forward_count_counts"],
                                                                   results["forward_hooks_counts"]))}
    if no_eos:  # without an EOS the hooks' simple rule (every fed token) is lna's rule
        agreement["generate_counts_equal_hooks"] = bool(np.array_equal(results["generate_count_counts"],
                                                                       results["generate_hooks_counts"]))
    ratios = {"generate_count_over_plain": seconds["generate_count"] / seconds["generate_plain"],
              "generate_hooks_over_plain": seconds["generate_hooks"] / seconds["generate_plain"],
              "forward_count_over_plain": seconds["forward_count"] / seconds["forward_plain"],
              "forward_hooks_over_plain": seconds["forward_hooks"] / seconds["forward_plain"]}
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent).stdout.strip()
    result = {"bench": "api_count", "device": common.machine(device, threads=1), "versions": common.versions(),
              "git_commit": commit, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "argv": sys.argv, "model": {"name": args.model, **bench_profile.CONFIGS[args.model], "dtype": "float32"},
              "workload": {"batch": B, "prompt_width": width, "new_tokens": K, "forward_seq": S,
                           "generated_tokens_counted": results["generate_count_tokens"]},
              "repeats_best_of": args.repeats, "seconds": seconds, "ratios": ratios, "agreement": agreement}
    out = common.write(f"api_count_{device.split(':')[0]}", result)
    print(out)
    for k, v in {**seconds, **ratios, **agreement}.items():
        print(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}")


if __name__ == "__main__":
    main()
