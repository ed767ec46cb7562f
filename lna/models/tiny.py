"""Tiny random-weight models of every supported family, with a byte-level tokenizer, built offline.

They stand in for real checkpoints where nothing can be downloaded: the README's default
run, the tests and the CPU benches. Built deterministically from a seed, so two machines
get the same weights. head_dim is 32 where the family allows, so that vLLM's CPU attention
accepts them. Each family's entry sets what tells it apart (rope scaling, a sliding window
short enough to matter, multipliers, soft caps, packed projections) so that a test on the
tiny model exercises it.
"""
from pathlib import Path

# Built-in model names accepted wherever a model id is (`--model lna:tiny-llama`).
PRESETS = {
    "tiny-llama": dict(arch="llama", hidden=128, layers=4, intermediate=512, heads=4, kv_heads=2),
    "tiny-mistral": dict(arch="mistral", hidden=128, layers=4, intermediate=512, heads=4, kv_heads=2),
}
SPECIALS = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2 as in Llama
WINDOW = 16  # sliding windows in the tiny models: shorter than the test sequences
MIXED = ["sliding_attention", "full_attention"]  # layer types that alternate (2-layer models)

# arch -> (transformers model_type, config entries beyond the sizes). The first two build
# the README's demo models: leave them as they are (their weights must not change).
ARCHS = {
    "llama": ("llama", {}),
    "mistral": ("mistral", {}),
    "llama3": ("llama", {"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                             "original_max_position_embeddings": 32}}),
    "mistral-swa": ("mistral", {"sliding_window": WINDOW}),
    "ministral": ("ministral", {"sliding_window": WINDOW, "layer_types": MIXED}),
    "ministral3": ("ministral3", {}),
    "qwen2": ("qwen2", {}),  # q/k/v projections with biases
    "qwen3": ("qwen3", {}),  # q/k RMS norms
    "olmo": ("olmo", {"clip_qkv": 8.0}),
    "olmo2": ("olmo2", {}),
    "olmo3": ("olmo3", {"sliding_window": WINDOW, "layer_types": MIXED}),
    "granite": ("granite", {"embedding_multiplier": 12.0, "residual_multiplier": 0.22,
                            "attention_multiplier": 0.0078125, "logits_scaling": 8.0}),
    "cohere": ("cohere", {"logit_scale": 0.0625, "use_qk_norm": False, "tie_word_embeddings": True}),
    "cohere2": ("cohere2", {"sliding_window": WINDOW, "layer_types": MIXED, "tie_word_embeddings": True}),
    "phi3": ("phi3", {}),  # packed gate_up_proj
    "glm": ("glm", {}),  # packed gate_up_proj, partial rotary
    "glm4": ("glm4", {}),
    # Gemma: GELU-tanh; embeddings scaled by sqrt(hidden) inside the model; tied embeddings
    # (vLLM's Gemma classes always tie them)
    "gemma": ("gemma", {"tie_word_embeddings": True}),
    "gemma2": ("gemma2", {"sliding_window": WINDOW, "layer_types": MIXED, "attn_logit_softcapping": 50.0,
                          "final_logit_softcapping": 30.0, "query_pre_attn_scalar": 32, "tie_word_embeddings": True}),
    "gemma3": ("gemma3_text", {"sliding_window": WINDOW, "layer_types": MIXED, "query_pre_attn_scalar": 32,
                               "final_logit_softcapping": 30.0, "tie_word_embeddings": True}),
    # a multimodal Gemma 3 checkpoint: lna profiles its language model (a tiny vision tower)
    "gemma3-mm": ("gemma3", {"text_config": {"sliding_window": WINDOW, "layer_types": MIXED,
                                             "query_pre_attn_scalar": 32},
                             "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                               "num_attention_heads": 2, "image_size": 28, "patch_size": 14},
                             "mm_tokens_per_image": 4, "image_token_index": 3, "boi_token_index": 4,
                             "eoi_token_index": 5, "tie_word_embeddings": True}),
    "vaultgemma": ("vaultgemma", {"sliding_window": WINDOW, "layer_types": MIXED, "query_pre_attn_scalar": 32,
                                  "tie_word_embeddings": True}),
    "smollm3": ("smollm3", {"no_rope_layers": [1, 0]}),  # layer 1 without rope
    "stablelm": ("stablelm", {"partial_rotary_factor": 0.5}),
    "helium": ("helium", {}),
    "exaone4": ("exaone4", {"sliding_window": WINDOW, "layer_types": MIXED}),
    "seed_oss": ("seed_oss", {"attention_bias": True}),
    "hunyuan_v1_dense": ("hunyuan_v1_dense", {}),
    "ernie4_5": ("ernie4_5", {}),
    "minicpm3": ("minicpm3", {"q_lora_rank": 32, "kv_lora_rank": 16, "qk_nope_head_dim": 16,
                              "qk_rope_head_dim": 16, "v_head_dim": 32, "scale_emb": 12, "scale_depth": 1.4,
                              "dim_model_base": 16, "num_key_value_heads": 2}),  # MLA: KV heads = heads
    "hyperclovax": ("hyperclovax", {"embedding_multiplier": 2.0, "residual_multiplier": 0.5,
                                    "attention_multiplier": 0.03125, "logits_scaling": 0.5}),
    # differential attention: an even number (>= 2) of KV heads
    "diffllama": ("diffllama", {"num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}),
    "cwm": ("cwm", {"sliding_window": WINDOW, "layer_types": MIXED}),
}

# Mixture of experts (lna.models.moe; apart: tests/test_families.py builds every ARCHS entry as a
# dense family): 8 experts, 2 or 3 per token; shared experts and dense layers narrower or wider
# than the experts, where the family has them.
MOE_ARCHS = {
    "mixtral": ("mixtral", {"num_local_experts": 8, "num_experts_per_tok": 2}),
    "qwen2_moe": ("qwen2_moe", {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 48,
                                "shared_expert_intermediate_size": 80}),
    "qwen3_moe": ("qwen3_moe", {"num_experts": 8, "num_experts_per_tok": 3, "moe_intermediate_size": 48,
                                "mlp_only_layers": [1]}),
    "olmoe": ("olmoe", {"num_experts": 8, "num_experts_per_tok": 3}),
    "deepseek_v2": ("deepseek_v2", {"n_routed_experts": 8, "num_experts_per_tok": 2, "n_shared_experts": 1,
                                    "moe_intermediate_size": 48, "first_k_dense_replace": 1, "q_lora_rank": 32,
                                    "kv_lora_rank": 16, "qk_nope_head_dim": 16, "qk_rope_head_dim": 16,
                                    "v_head_dim": 32, "head_dim": 16, "num_key_value_heads": 2}),  # MLA
    "deepseek_v3": ("deepseek_v3", {"n_routed_experts": 8, "num_experts_per_tok": 2, "n_shared_experts": 2,
                                    "moe_intermediate_size": 48, "first_k_dense_replace": 1, "n_group": 2,
                                    "topk_group": 1, "q_lora_rank": 32, "kv_lora_rank": 16,
                                    "qk_nope_head_dim": 16, "qk_rope_head_dim": 16, "v_head_dim": 32,
                                    "head_dim": 16, "num_key_value_heads": 2}),  # MLA: KV heads = heads
}


def byte_tokenizer(chat_template: str | None = None):
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
    out = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )
    if chat_template is not None:
        out.chat_template = chat_template
    return out


def build_tiny(path, arch: str = "llama", *, hidden: int = 64, layers: int = 2, intermediate: int = 96,
               heads: int = 2, kv_heads: int = 1, seed: int = 0, chat_template: str | None = None) -> Path:
    """Save a random-weight causal LM of `arch` (a key of ARCHS or MOE_ARCHS) and its tokenizer to `path`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    known = {**ARCHS, **MOE_ARCHS}
    if arch not in known:
        raise ValueError(f"unknown tiny architecture {arch!r}: one of {', '.join(known)}")
    model_type, extra = known[arch]
    tokenizer = byte_tokenizer(chat_template)
    sizes = {
        "vocab_size": len(tokenizer),  # every id the model can sample decodes
        "hidden_size": hidden, "intermediate_size": intermediate,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "head_dim": hidden // heads, "max_position_embeddings": 4096, "bos_token_id": 1, "eos_token_id": 2,
        "pad_token_id": 2, "tie_word_embeddings": False,
    }
    if "text_config" in extra:  # multimodal: the sizes are the language model's
        extra = {**extra, "text_config": {**sizes, **extra["text_config"]}}
        sizes = {k: sizes[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings")}
    config = AutoConfig.for_model(model_type, **{**sizes, **extra})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    # HF's default init (std 0.02) makes a tiny model's gates nearly input-independent; a
    # fan-in scaled init makes them depend on the tokens. Residual branches (o_proj,
    # down_proj) start 10x smaller so that token identity, hence script and language,
    # stays visible in the residual stream, as the demo is meant to show.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                branch = name.endswith(("o_proj.weight", "down_proj.weight"))
                p.normal_(0.0, p.shape[1] ** -0.5 * (0.1 if branch else 1.0))
            elif p.ndim == 3:  # MoE experts [E, out, in] (dense models have none)
                p.normal_(0.0, p.shape[2] ** -0.5 * (0.1 if name.endswith("down_proj") else 1.0))
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
