"""lna-ablate's perplexity takes its loss in float64: against a hook reference that reads the
very logits the runner computes (a forward hook on the model's output embeddings) and takes
the cross-entropy of them in float64, the PPL agrees within 1e-9 relative (fp32's loss read
about 1e-5 relative low over the tokens of a language)."""
import numpy as np
import pytest
import torch

from conftest import random_samples
from lna.interventions import ablate
from lna.runners.hf import HFRunner


@pytest.fixture(scope="module")
def runner(tiny_models):
    return HFRunner(tiny_models["llama"])


def test_ppl_equals_a_float64_hook_reference(runner):
    samples = random_samples(5, ["en"], questions=4, max_response=60)
    captured = []
    hook = runner.model.get_output_embeddings().register_forward_hook(
        lambda module, args, out: captured.append(out.detach().clone()))
    try:
        for s in samples:  # one sample a call: the captured rows are its response positions, in order
            captured.clear()
            got = ablate.ablate(runner, [s], {"none": {"en": [np.zeros(0, np.int64)] * runner.layers}})
            ppl = got["settings"]["none"]["ppl"][0][0]
            logits = torch.cat(captured)
            target = torch.tensor(s.response, dtype=torch.long)
            assert logits.dtype == torch.float32 and logits.shape[0] == len(target)
            ref = torch.nn.functional.cross_entropy(logits.double(), target, reduction="sum").item()
            want = np.exp(ref / len(target))
            fp32 = np.exp(torch.nn.functional.cross_entropy(logits, target, reduction="sum").item() / len(target))
            assert abs(ppl / want - 1) <= 1e-9, (ppl, want, fp32)
    finally:
        hook.remove()
