"""A tiny random NLLB-architecture translation model, built offline, for lna-align's tests.

The tokenizer is transformers' own NllbTokenizer over a character vocabulary (every
character of the given texts, plain and word-initial), with NLLB's language-code special
tokens, so src_lang switches the code token exactly as with the real model.
"""


def build_tiny_nllb(path, corpus, seed: int = 0):
    import torch
    from transformers import M2M100Config, M2M100ForConditionalGeneration, NllbTokenizer

    chars = sorted(set("".join(corpus)) - {" ", "\n"})
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "▁": 4}
    for c in chars:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault("▁" + c, len(vocab))
    tokenizer = NllbTokenizer(vocab=vocab, merges=[], src_lang="eng_Latn")
    config = M2M100Config(
        vocab_size=len(tokenizer), d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=1024,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, scale_embedding=True,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
    )
    torch.manual_seed(seed)
    model = M2M100ForConditionalGeneration(config).eval()
    with torch.no_grad():  # larger than HF's init so that scores differ visibly between texts
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.normal_(0.0, p.shape[1] ** -0.5)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
