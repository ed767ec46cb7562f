"""lna.count on other families (packed gate_up_proj, GELU-tanh, a multimodal wrapper whose
decoder is fed embeddings): counts around a padded greedy generate equal gate hooks on the
very same run, the model comes back unchanged."""
import numpy as np
import pytest
import torch

import lna
import naive
from lna.models.tiny import build_tiny


@pytest.mark.parametrize("arch", ["phi3", "gemma", "gemma3-mm"])
def test_count_around_generate_equals_gate_hooks(arch, tmp_path):
    path = str(build_tiny(tmp_path / arch, arch, seed=3))
    model = naive.load(path)
    rng = np.random.default_rng(1)
    prompts = [[1] + rng.integers(3, 259, n).tolist() for n in (5, 9, 3, 7)]
    codes = ["en", "zh", "en", "th"]
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    K = 8
    gates, hooks = {}, []

    def spy(li):
        def hook(module, inputs, out):
            g = out.detach().reshape(-1, out.shape[-1])
            gates.setdefault(li, []).append(g[:, :g.shape[-1] // 2] if arch == "phi3" else g)
        return hook

    eos = 10**6  # never sampled: every row runs to the limit
    with lna.count(model, ["en", "zh", "th"], eos=[eos]) as counter:
        for li, layer in enumerate(naive.layers(model)):
            proj = layer.mlp.gate_up_proj if arch == "phi3" else layer.mlp.gate_proj
            hooks.append(proj.register_forward_hook(spy(li)))
        with counter.language(codes, generated=True):
            out = model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=K, do_sample=False,
                                 pad_token_id=0, eos_token_id=eos)
    for h in hooks:
        h.remove()
    assert out.shape[1] == width + K
    ref = np.zeros_like(counter.counts)
    for li, steps in gates.items():
        assert len(steps) == K  # the prompt, then K - 1 fed tokens
        for g in steps[1:]:
            for r, code in enumerate(codes):
                ref[li, ["en", "zh", "th"].index(code)] += (g[r] > 0).numpy()
    assert np.array_equal(counter.counts, ref) and counter.counts.any()
    assert counter.tokens.tolist() == [2 * (K - 1), K - 1, K - 1]
    # the prompts were recorded (left padding removed) as the samples' prompts
    store = counter.store()
    assert sum(len(c.ids) for c in store.samples.values()) == 4
    ids2 = torch.tensor([[1, 40, 50, 60]])
    with torch.no_grad():
        assert torch.equal(model(ids2).logits, naive.load(path)(ids2).logits)
