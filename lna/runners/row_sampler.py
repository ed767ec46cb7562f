"""Sampling inside transformers' generate with a random stream of its own for every response.

generate draws all rows of a batch from one global generator, so a response depends on which
other prompts share its batch: another batch size, shard or data order samples other
responses. `RowSampler` draws each row's next token itself from uniforms fixed in advance by
that response's seed (on the CPU, so that any device draws the same ones), by the inverse CDF
of the distribution transformers' own temperature and top-p warpers give, and hands generate
a distribution with all its mass on that token. vLLM does the same with a seed per request.
"""
import torch
from transformers import LogitsProcessor, TemperatureLogitsWarper, TopPLogitsWarper


class RowSampler(LogitsProcessor):
    """seeds: one per generated row (prompt-major, as generate lays out num_return_sequences);
    steps: tokens each row may sample; width: the batch's (padded) prompt length."""

    def __init__(self, seeds, steps: int, width: int, temperature: float, top_p: float, device):
        self.u = torch.stack([torch.rand(steps, generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64)
                              for s in seeds]).to(device)
        self.width = width
        self.warpers = [TemperatureLogitsWarper(temperature)] + ([TopPLogitsWarper(top_p)] if top_p < 1 else [])

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for warp in self.warpers:
            scores = warp(input_ids, scores)
        probs = torch.softmax(scores.double(), dim=-1)
        cdf = probs.cumsum(-1)
        u = self.u[:, input_ids.shape[1] - self.width, None] * cdf[:, -1:]
        token = torch.searchsorted(cdf, u, right=True)
        # u rounded up to the total: the last token with any probability
        last = (probs > 0).long().cumsum(-1).argmax(-1, keepdim=True)
        token = torch.where(token >= scores.shape[-1], last, token)
        return torch.full_like(scores, float("-inf")).scatter_(1, token, 0.0)
