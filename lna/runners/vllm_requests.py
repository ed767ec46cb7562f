"""The requests lna submits to vLLM's engine (lna.runners.vllm): token prompts with their
cache salts, and SamplingParams carrying lna's per-request metadata to the workers
(SamplingParams.extra_args, keys of lna.runners.vllm_batch), and the responses read back.
vLLM is imported inside the functions: the runner checks that it is installed first.
"""
import numpy as np

from lna.runners.vllm_batch import GENERATE_KEY, META_KEY


def ids(tokens) -> list[int]:
    """Token ids as plain ints (samples may hold tuples, lists or numpy arrays)."""
    return np.asarray(tokens, dtype=np.int64).tolist()


def force_decoding(todo, seqs, lo, slots, salts, skip_cache) -> tuple:
    """(prompts, params) of a count or nll call: sample todo[k] as one prompt seqs[k]
    (prompt + response) with max_tokens=1, its window starting at lo[k] and its slot
    slots[todo[k]]; salts[k] ("" for none) keeps its KV to its mask, skip_cache[k] keeps it
    from reading the prefix cache."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    prompts, params = [], []
    for k, i in enumerate(todo):
        prompt = TokensPrompt(prompt_token_ids=seqs[k])
        if salts[k]:
            prompt["cache_salt"] = salts[k]
        prompts.append(prompt)
        meta = [i, int(lo[k]), len(seqs[k]), int(slots[i])]
        params.append(SamplingParams(max_tokens=1, temperature=0.0, detokenize=False,
                                     skip_reading_prefix_cache=bool(skip_cache[k]), extra_args={META_KEY: meta}))
    return prompts, params


def sampling(prompts, seeds, steer, slots, call: int, *, n, temperature, top_p, max_new_tokens, eos) -> tuple:
    """(requests, params) of a generate call: prompt i sampled n times from seeds[i], under
    intervention steer[i] (-1: none; its KV salted per intervention and call), or counted in
    language slot slots[i] (slots None: no counting)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    counting = slots is not None
    params, requests = [], []
    for i, p in enumerate(prompts):
        first_seed = seeds[i]  # vLLM seeds the k-th of n samples with seed + k
        extra = {GENERATE_KEY: steer[i]} if steer[i] >= 0 else None
        if counting:  # the last kept token is fed in one more step; its sampled token is dropped
            extra = {META_KEY: [i * n, len(p), len(p) + max_new_tokens, int(slots[i]), first_seed]}
        # Stopping at every EOS id lna cuts at (vLLM's own set, lna.runners.base.eos_ids).
        params.append(SamplingParams(n=n, temperature=temperature, top_p=top_p,
                                     max_tokens=max_new_tokens + counting, seed=first_seed,
                                     stop_token_ids=sorted(eos), detokenize=False, extra_args=extra))
        request = TokensPrompt(prompt_token_ids=ids(p))
        if steer[i] >= 0:  # KV computed under an intervention serves only that intervention
            request["cache_salt"] = f"lna-{call}-steer-{steer[i]}"
        requests.append(request)
    return requests, params


def responses(outs, max_new_tokens: int, eos) -> list[list[list[int]]]:
    """[prompt][k] the k-th response's ids, cut at the first EOS id."""
    result = []
    for out in outs:
        samples = []
        for o in sorted(out.outputs, key=lambda o: o.index):
            got = list(o.token_ids)[:max_new_tokens]
            cut = next((k for k, t in enumerate(got) if t in eos), len(got))
            samples.append(got[:cut])
        result.append(samples)
    return result
