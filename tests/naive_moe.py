"""Independent reference for the MoE runner: an unmodified transformers model, one sample at
a time, with hooks that record what each experts module is given (hidden states, the
router's top-k indices) and each always-on MLP's gate; each routed token's gate for each of
its experts is then recomputed from the expert's own weights, expert by expert."""
import numpy as np
import torch

from naive import AMBIGUOUS, layers, load, responses_nll


def parts(layer):
    """(experts module or None, always-on MLP or None): the shared expert of a MoE block, or
    the layer's dense MLP."""
    mlp = layer.mlp
    experts = getattr(mlp, "experts", None)
    if experts is None:
        return None, mlp
    return experts, getattr(mlp, "shared_expert", None) or getattr(mlp, "shared_experts", None)


@torch.no_grad()
def counts(path, samples, languages, implementation="eager"):
    """(always-on counts [layer, language, widest], their ambiguous gates, expert counts
    [layer, expert, language, neuron], their ambiguous gates, routed [layer, expert, language])
    at response positions; transformers runs its experts with `implementation`."""
    model = load(path)
    model.config._experts_implementation = implementation
    cfg = model.config.get_text_config()
    blocks = [parts(layer) for layer in layers(model)]
    widths = [0 if d is None else d.gate_proj.out_features for _, d in blocks]
    E, I = next((e.gate_up_proj.shape[0], e.down_proj.shape[2]) for e, _ in blocks if e is not None)
    L, K = cfg.num_hidden_layers, len(languages)
    dense, dense_amb = np.zeros((L, K, max(widths)), np.int64), np.zeros((L, K, max(widths)), np.int64)
    experts, experts_amb = np.zeros((L, E, K, I), np.int64), np.zeros((L, E, K, I), np.int64)
    routed = np.zeros((L, E, K), np.int64)
    seen, gates, hooks = {}, {}, []
    for li, (ex, mlp) in enumerate(blocks):
        if ex is not None:
            hooks.append(ex.register_forward_pre_hook(lambda m, args, li=li: seen.__setitem__(li, args[:2])))
        if mlp is not None:
            hooks.append(mlp.gate_proj.register_forward_hook(
                lambda m, i, o, li=li: gates.__setitem__(li, o.reshape(-1, o.shape[-1]))))
    try:
        for s in samples:
            model(torch.tensor([list(s.prompt) + list(s.response)]))
            k, start = languages.index(s.lang), len(s.prompt)
            for li, gate in gates.items():
                g = gate[start:]
                dense[li, k, :widths[li]] += (g > 0).sum(0).numpy()
                dense_amb[li, k, :widths[li]] += (g.abs() < AMBIGUOUS).sum(0).numpy()
            for li, (hidden, index) in seen.items():
                ex = blocks[li][0]
                h, idx = hidden[start:], index[start:]
                for e in range(E):
                    rows = (idx == e).any(1)
                    routed[li, e, k] += int(rows.sum())
                    g = h[rows] @ ex.gate_up_proj[e, :I].t()
                    experts[li, e, k] += (g > 0).sum(0).numpy()
                    experts_amb[li, e, k] += (g.abs() < AMBIGUOUS).sum(0).numpy()
    finally:
        for h in hooks:
            h.remove()
    return dense, dense_amb, experts, experts_amb, routed


@torch.no_grad()
def nll(path, samples, dtype=torch.float64):
    """Sum of response-token NLLs per sample, one sequence at a time, experts by transformers'
    per-expert loop (its grouped matmul has no float64 kernel)."""
    model = load(path, dtype)
    model.config._experts_implementation = "eager"
    return responses_nll(model, samples, lambda i: [], dtype)


def intervene(model, masks, values=None):
    """Hooks that replace act(gate) by 0 (or by values) where masks, in an unmodified model:
    masks is lna.runners.moe.ExpertMasks for one mask (always_on [layer, neuron], experts
    [layer, expert, neuron]). transformers' eager experts loop calls act_fn once per hit
    expert, in increasing expert order, on rows ordered as torch.where((index == e).T)
    orders them; a pre-hook on the experts module records the index to follow it."""
    hooks = []
    for li, layer in enumerate(layers(model)):
        ex, mlp = parts(layer)
        if mlp is not None:
            w = mlp.gate_proj.out_features
            m = torch.from_numpy(np.asarray(masks.always_on[li, :w], bool))
            v = torch.zeros(w) if values is None else torch.from_numpy(values.always_on[li, :w])
            hooks.append(mlp.act_fn.register_forward_hook(lambda mod, i, o, m=m, v=v: torch.where(m, v.to(o.dtype), o)))
        if ex is None:
            continue
        m = torch.from_numpy(np.asarray(masks.experts[li], bool))
        v = torch.zeros(m.shape) if values is None else torch.from_numpy(values.experts[li])
        seen = {}

        def before(mod, args, seen=seen):
            index = args[1]
            seen["experts"] = iter(sorted(set(index.flatten().tolist())))

        def after(mod, i, o, seen=seen, m=m, v=v):
            e = next(seen["experts"])
            return torch.where(m[e], v[e].to(o.dtype), o)

        hooks.append(ex.register_forward_pre_hook(before))
        hooks.append(ex.act_fn.register_forward_hook(after))
    return hooks


@torch.no_grad()
def nll_intervened(path, samples, masks, mask_ids, values=None, dtype=torch.float64):
    """nll with the masks of each sample (ExpertMasks of [n_masks, ...] tables; mask_ids -1:
    none) applied through `intervene`, experts by the eager loop."""
    from lna.runners.moe import ExpertMasks

    model = load(path, dtype)
    model.config._experts_implementation = "eager"

    def hooks(i):
        if mask_ids[i] < 0:
            return []
        pick = lambda t: None if t is None else ExpertMasks(*(p[mask_ids[i]] for p in t))  # noqa: E731
        return intervene(model, pick(masks), pick(values))

    return responses_nll(model, samples, hooks, dtype)
