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


def layers(model):
    """The decoder layers (multimodal wrappers hold the language model one level down)."""
    inner = model.model
    return inner.language_model.layers if hasattr(inner, "language_model") else inner.layers


def gate_hook(mlp, store, li):
    """A forward hook recording the gate pre-activation of `mlp` (packed gate_up_proj:
    its first half, as Phi-3's forward splits it); returns None so nothing changes."""
    if hasattr(mlp, "gate_proj"):
        return mlp.gate_proj.register_forward_hook(lambda m, i, o: store.__setitem__(li, o[0]))
    return mlp.gate_up_proj.register_forward_hook(
        lambda m, i, o: store.__setitem__(li, o[0][..., : o.shape[-1] // 2]))


@torch.no_grad()
def counts(path, samples, languages, count_prompt=False):
    """(counts, ambiguous) int64 [layer, language, neuron]: gate_proj(x) > 0 at response
    positions of each prompt+response sequence, and how many of those gates were ~0."""
    model = load(path)
    cfg = model.config.get_text_config()
    L, I = cfg.num_hidden_layers, cfg.intermediate_size
    out = np.zeros((L, len(languages), I), np.int64)
    amb = np.zeros_like(out)
    acts = {}
    hooks = [gate_hook(layer.mlp, acts, li) for li, layer in enumerate(layers(model))]
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


@torch.no_grad()
def activation_sums(path, samples, languages, activation="silu"):
    """(sums, active_sums, abs_sums) float64 [layer, language, neuron]: act(gate) computed in
    float64 from the model's own fp32 gate values (a hook on the gate projection of an
    unmodified transformers model, one sequence at a time), summed over each sample's
    response positions; over those with gate > 0; and |act| summed (the scale of rounding)."""
    import torch.nn.functional as F

    act = {"silu": F.silu, "gelu_tanh": lambda g: F.gelu(g, approximate="tanh")}[activation]
    model = load(path)
    cfg = model.config.get_text_config()
    shape = (cfg.num_hidden_layers, len(languages), cfg.intermediate_size)
    sums, active, scale = (np.zeros(shape) for _ in range(3))
    gates = {}
    hooks = [gate_hook(layer.mlp, gates, li) for li, layer in enumerate(layers(model))]
    try:
        for s in samples:
            model(torch.tensor([list(s.prompt) + list(s.response)]))
            k = languages.index(s.lang)
            for li, gate in gates.items():
                g = gate[len(s.prompt):].double()
                a = act(g)
                sums[li, k] += a.sum(0).numpy()
                active[li, k] += torch.where(g > 0, a, 0.0).sum(0).numpy()
                scale[li, k] += a.abs().sum(0).numpy()
    finally:
        for h in hooks:
            h.remove()
    return sums, active, scale


def assert_counts_equal(got, ref, ambiguous):
    """Exact equality except where a reference gate was within rounding of zero; such gates
    must be rare (about 1 in 10^4 of the gates looked at), or the test would prove little."""
    diff = np.abs(got.astype(np.int64) - ref)
    assert (diff <= ambiguous).all(), f"{int((diff > ambiguous).sum())} counts differ beyond near-zero gates"
    looked_at = ambiguous.size * max(1, ref.max())
    assert ambiguous.sum() <= 1e-4 * looked_at, "too many near-zero gates for a meaningful test"


def intervene(model, mask, value=None, offset=None):
    """Hooks on every layer's activation: act(gate) replaced by 0 (or by value, float32
    [layer, neuron] rounded to the model's dtype) where mask [layer, neuron], then offset
    (float32 [layer, neuron]) added; returns them."""
    hooks = []
    for li, layer in enumerate(layers(model)):
        act = getattr(layer.mlp, "act_fn", None) or layer.mlp.activation_fn  # Phi-3: activation_fn
        m = torch.from_numpy(np.asarray(mask[li], bool))
        v = torch.zeros(m.shape) if value is None else torch.from_numpy(np.asarray(value[li], np.float32))
        d = torch.zeros(m.shape) if offset is None else torch.from_numpy(np.asarray(offset[li], np.float32))
        hooks.append(act.register_forward_hook(
            lambda mod, inp, o, m=m, v=v, d=d: torch.where(m, v.to(o.dtype), o) + d.to(o.dtype)))
    return hooks


@torch.no_grad()
def nll(path, samples, masks=None, mask_ids=None, dtype=torch.float64, values=None, offsets=None):
    """Sum of response-token NLLs per sample; masks zero act(gate) (or set it to values, then
    add offsets) via a hook on the activation."""
    model = load(path, dtype)
    def hooks(i):
        if masks is None or mask_ids[i] < 0:
            return []
        pick = lambda t: None if t is None else t[mask_ids[i]]  # noqa: E731
        return intervene(model, masks[mask_ids[i]], pick(values), pick(offsets))

    return responses_nll(model, samples, hooks, dtype)


def responses_nll(model, samples, hooks_of, dtype) -> np.ndarray:
    """Sum of response-token NLLs per sample, one sequence at a time (logits in dtype),
    under the hooks that hooks_of(i) puts on the model for sample i (removed after it)."""
    out = np.zeros(len(samples))
    for i, s in enumerate(samples):
        hooks = hooks_of(i)
        try:
            ids = torch.tensor([[int(t) for t in (*s.prompt, *s.response)]])
            logits = model(ids).logits[0].to(dtype)
            P = len(s.prompt)
            out[i] = torch.nn.functional.cross_entropy(logits[P - 1:-1], ids[0, P:], reduction="sum").item()
        finally:
            for h in hooks:
                h.remove()
    return out


@torch.no_grad()
def greedy(path, prompts, max_new_tokens, mask=None, value=None, model=None, offset=None):
    """Greedy continuations of `prompts` (one left-padded batch, as lna's runner batches them)
    by an unmodified transformers model, with the intervention hooks if given; EOS (2) cut."""
    model = model or load(path)
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[2] * (width - len(p)) + list(p) for p in prompts])
    attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    hooks = [] if mask is None else intervene(model, mask, value, offset)
    try:
        out = model.generate(input_ids=ids, attention_mask=attn, do_sample=False, max_new_tokens=max_new_tokens,
                             pad_token_id=2, eos_token_id=2)[:, width:].tolist()
    finally:
        for h in hooks:
            h.remove()
    return [g[:g.index(2)] if 2 in g else g for g in out]
