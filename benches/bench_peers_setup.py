"""The model and workload of benches/bench_peers.py, built offline.

A random-weight Llama with the shape of a real small model (SmolLM-135M by default; the
7B shape for the GPU check), saved with a byte-level BPE tokenizer trained on MGSM's own
questions, and a workload of the study's shape: MGSM questions in several languages, a
few given responses per question (text of that language, at the study's response lengths).
Every tool reads the same token ids (computed here by lna's own tokenization of the
prompt and of prompt + response), so their counts compare cell by cell.
"""
import json
from pathlib import Path

import numpy as np

SHAPES = {  # LlamaConfig entries; weights do not change speed
    "smollm-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                        num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
    "tinyllama-1.1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                           num_key_value_heads=4, vocab_size=32000, tie_word_embeddings=False),
    "llama-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False),
    "tiny": dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, vocab_size=4096, tie_word_embeddings=True),  # dry runs and tests
}
# The study's mean response length per language (tokens of its model), as in bench_profile.
RESPONSE_MEAN = {"en": 128, "ru": 149, "es": 137, "fr": 132, "de": 134, "zh": 153, "ja": 172,
                 "bn": 281, "th": 253, "sw": 163}
TOKENIZER_VOCAB = 16000  # BPE merges learnt from MGSM: prompts of ~100-300 tokens, as the study's
PROMPT = ("Below is an instruction that describes a task. Write a response that appropriately completes "
          "the request in {language}. Please answer in {language}.\n\n### Instruction:\n{query}\n\n### Response:")


def mgsm_texts(mgsm: Path, langs) -> dict:
    """lang -> list of (question, answer) of MGSM's TSVs; where the folder lacks them (the GPU
    machine, a clone without ../shared), lna's own demo set (the study's ten languages, 24
    questions each; data_source() says which)."""
    if not has_mgsm(mgsm):
        from lna.inputs import data

        out = {lang: [] for lang in langs}
        for q in data.load("demo")[1]:
            if q.lang in out:
                out[q.lang].append((q.query, q.answer))
        return out
    out = {}
    for lang in langs:
        rows = []
        for line in (mgsm / f"mgsm_{lang}.tsv").read_text(encoding="utf-8").splitlines():
            if "\t" in line:
                q, a = line.rsplit("\t", 1)
                rows.append((q, a))
        out[lang] = rows
    return out


def has_mgsm(mgsm: Path) -> bool:
    return Path(mgsm, "mgsm_en.tsv").is_file()


def data_source(mgsm: Path) -> str:
    return f"MGSM ({mgsm})" if has_mgsm(mgsm) else f"lna's demo set (no MGSM at {mgsm})"


def build_model(path: Path, shape: str, mgsm: Path, seed: int = 0, device: str = "cpu",
                dtype: str = "float32") -> Path:
    """Save the random-weight model and its tokenizer to `path` (kept: built once); built
    on `device` in `dtype` (a 7B is built on the GPU in bf16 in seconds, on a CPU in minutes)."""
    path = Path(path)
    if (path / "config.json").is_file() and (path / "tokenizer.json").is_file():
        return path
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    texts = [q for rows in mgsm_texts(mgsm, list(RESPONSE_MEAN)).values() for q, _ in rows]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    vocab = min(TOKENIZER_VOCAB, SHAPES[shape]["vocab_size"])
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts + [PROMPT], trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                       special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>")
    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=4096, bos_token_id=1, eos_token_id=2,
                         pad_token_id=2, rope_theta=10000.0)
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        with torch.device(device):
            net = LlamaForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(previous)
    tmp = path.with_name(path.name + ".partial")
    net.save_pretrained(tmp)
    fast.save_pretrained(tmp)
    tmp.rename(path)
    return path


def build_workload(model: Path, mgsm: Path, out: Path, langs, questions: int, responses: int,
                   seed: int = 0) -> dict:
    """Write `out`.jsonl (lna-profile's input: verbatim prompts with given responses) and
    `out`.json (the token ids every tool reads); returns the latter's content."""
    from transformers import AutoTokenizer

    from lna.inputs import responses as lna_responses

    tok = AutoTokenizer.from_pretrained(model)
    texts = mgsm_texts(mgsm, langs)
    rng = np.random.default_rng(seed)
    records, samples = [], []
    from lna.core import languages as lna_languages

    for lang in langs:
        rows = texts[lang]
        for q in range(questions):
            query, answer = rows[q]
            prompt = PROMPT.format(language=lna_languages.get(lang).name, query=query)
            prompt_ids = lna_responses.encode(tok, prompt)
            given = []
            for j in range(responses):
                target = max(8, int(rng.normal(RESPONSE_MEAN[lang], 0.35 * RESPONSE_MEAN[lang])))
                text, k = "", q + 1 + j * 7
                # text of the language (the next questions and their answers) up to the length
                while len(tok(text, add_special_tokens=False)["input_ids"]) < target:
                    nq, na = rows[k % len(rows)]
                    text += f" {nq} {na}."
                    k += 1
                ids = tok(text, add_special_tokens=False)["input_ids"][:target]
                text = tok.decode(ids)
                given.append(text)
                resp_ids = lna_responses.encode_response(tok, prompt, prompt_ids, text)
                samples.append({"key": f"{lang}/{q}/{j}", "lang": lang, "group": f"{lang}/{q}",
                                "prompt_ids": list(prompt_ids), "response_ids": list(resp_ids)})
            records.append({"lang": lang, "id": q, "prompt": prompt, "answer": answer, "responses": given})
    Path(f"{out}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                                    encoding="utf-8")
    work = {"languages": list(langs), "samples": samples}
    Path(f"{out}.json").write_text(json.dumps(work))
    return work


def samples_of(work: dict):
    """The workload as lna Samples."""
    from lna.inputs.samples import Sample

    return [Sample(s["key"], s["lang"], np.asarray(s["prompt_ids"], np.int32), np.asarray(s["response_ids"], np.int32),
                   s["group"]) for s in work["samples"]]
