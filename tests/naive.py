"""Independent references for the runners: an unmodified transformers model, one sample
at a time, with forward hooks on every MLP (the research scripts' way, minus two passes)."""
import numpy as np
import torch
from transformers import AutoModelForCausalLM

# Gates this close to zero may change sign between two fp32 computation orders (batched vs
# one sequence); a count may differ from the reference by at most the number of these.
AMBIGUOUS = 1e-5


def load(path, dtype=torch.float32):
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager").eval()


@torch.no_grad()
def counts(path, samples, languages, count_prompt=False):
    """(counts, ambiguous) int64 [layer, language, neuron]: gate_proj(x) > 0 at response
    positions of each prompt+response sequence, and how many of those gates were ~0."""
    model = load(path)
    L, I = model.config.num_hidden_layers, model.config.intermediate_size
    out = np.zeros((L, len(languages), I), np.int64)
    amb = np.zeros_like(out)
    acts = {}
    hooks = [layer.mlp.gate_proj.register_forward_hook(lambda m, i, o, li=li: acts.__setitem__(li, o[0]))
             for li, layer in enumerate(model.model.layers)]
    try:
        for s in samples:
            model(torch.tensor([list(s.prompt) + list(s.response)]))
            k, start = languages.index(s.lang), 0 if count_prompt else len(s.prompt)
            for li, gate in acts.items():
                g = gate[start:]
                out[li, k] += (g > 0).sum(0).numpy()
                amb[li, k] += (g.abs() < AMBIGUOUS).sum(0).numpy()
    finally:
        for h in hooks:
            h.remove()
    return out, amb


def assert_counts_equal(got, ref, ambiguous):
    """Exact equality except where a reference gate was within rounding of zero; such gates
    must be rare (about 1 in 10^4 of the gates looked at), or the test would prove little."""
    diff = np.abs(got.astype(np.int64) - ref)
    assert (diff <= ambiguous).all(), f"{int((diff > ambiguous).sum())} counts differ beyond near-zero gates"
    looked_at = ambiguous.size * max(1, ref.max())
    assert ambiguous.sum() <= 1e-4 * looked_at, "too many near-zero gates for a meaningful test"


@torch.no_grad()
def nll(path, samples, masks=None, mask_ids=None, dtype=torch.float64):
    """Sum of response-token NLLs per sample; masks zero SiLU(gate) via a hook on act_fn."""
    model = load(path, dtype)
    out = np.zeros(len(samples))
    for i, s in enumerate(samples):
        hooks = []
        if masks is not None and mask_ids[i] >= 0:
            for li, layer in enumerate(model.model.layers):
                keep = torch.from_numpy(~masks[mask_ids[i], li]).to(dtype)
                hooks.append(layer.mlp.act_fn.register_forward_hook(lambda m, inp, o, keep=keep: o * keep))
        ids = torch.tensor([list(s.prompt) + list(s.response)])
        logits = model(ids).logits[0].to(dtype)
        P = len(s.prompt)
        out[i] = torch.nn.functional.cross_entropy(logits[P - 1:-1], ids[0, P:], reduction="sum").item()
        for h in hooks:
            h.remove()
    return out
