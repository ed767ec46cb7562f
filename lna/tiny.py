"""Tiny Llama/Mistral models with random weights and a byte-level tokenizer, built offline.

They stand in for real checkpoints where nothing can be downloaded: the README's default
run, the tests and the CPU benches. Built deterministically from a seed, so two machines
get the same weights. head_dim is 32 so that vLLM's CPU attention accepts them.
"""
from pathlib import Path

# Built-in model names accepted wherever a model id is (`--model lna:tiny-llama`).
PRESETS = {
    "tiny-llama": dict(arch="llama", hidden=128, layers=4, intermediate=512, heads=4, kv_heads=2),
    "tiny-mistral": dict(arch="mistral", hidden=128, layers=4, intermediate=512, heads=4, kv_heads=2),
}
SPECIALS = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2 as in Llama


def byte_tokenizer():
    """A byte-level tokenizer (every UTF-8 byte one token; BOS prepended), any language."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )


def build_tiny(path, arch: str = "llama", *, hidden: int = 64, layers: int = 2, intermediate: int = 96,
               heads: int = 2, kv_heads: int = 1, seed: int = 0) -> Path:
    """Save a random-weight causal LM of `arch` (llama | mistral) and its tokenizer to `path`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM),
                             "mistral": (MistralConfig, MistralForCausalLM)}[arch]
    tokenizer = byte_tokenizer()
    config = config_cls(
        vocab_size=len(tokenizer),  # every id the model can sample decodes
        hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        head_dim=hidden // heads, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2,
        pad_token_id=2, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    # HF's default init (std 0.02) makes a tiny model's gates nearly input-independent; a
    # fan-in scaled init makes them depend on the tokens. Residual branches (o_proj,
    # down_proj) start 10x smaller so that token identity, hence script and language,
    # stays visible in the residual stream, as the demo is meant to show.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                branch = name.endswith(("o_proj.weight", "down_proj.weight"))
                p.normal_(0.0, p.shape[1] ** -0.5 * (0.1 if branch else 1.0))
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
