"""Prompt formats (--template), what the store and responses file record of them, and the
Hugging Face details (--revision through the local cache, missing/gated models, names in titles)."""
import json
import shutil

import pytest

from conftest import one_line_error, profile_cli
from lna.core import config

from lna.inputs import data, responses

from lna.models import loading
from lna.cli import run
from lna.cli.profile import profile
from lna.core.errors import LnaError
from lna.storage.store import open_store
from lna.models.tiny import build_tiny

# A chat template that, like Llama 3's and Gemma's, starts with the BOS token itself.
CHAT = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")
MATHOCTOPUS = ("Below is an instruction that describes a task. Write a response that appropriately completes "
               "the request in {language}. Please answer in {language}.\n\n### Instruction:\n{query}\n\n### Response:")


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("chat") / "chatty-1b", "qwen3", chat_template=CHAT)


@pytest.fixture(scope="module")
def bare_model(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("bare") / "base-1b", "llama")


@pytest.fixture
def queries(tmp_path):
    recs = [{"lang": "en", "query": "What is 2+3?", "responses": [" 5", " Five."]},
            {"lang": "zh", "query": "2加3等于多少？", "responses": [" 5"]}]
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in recs) + "\n", encoding="utf-8")
    return str(path)


def records(store_path):
    return [json.loads(line) for line in responses.path_beside(store_path).read_text().splitlines()]


def test_chat_is_the_default_where_the_tokenizer_has_a_chat_template(chat_model, queries, tmp_path):
    from transformers import AutoTokenizer

    out = tmp_path / "s.zarr"
    assert profile_cli("--model", str(chat_model), "--dataset", queries, "--out", str(out)) == 0
    meta = open_store(out).meta
    assert meta["template"] == "chat" and meta["template_text"] == "<s><|user|>{query}\n<|assistant|>"
    tok = AutoTokenizer.from_pretrained(chat_model)
    for rec in records(out):
        messages = [{"role": "user", "content": rec["query"]}]
        assert rec["prompt"] == tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # one BOS, from the template: the ids transformers' own chat tokenization gives
        want = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)["input_ids"]
        assert rec["prompt_ids"] == want and rec["prompt_ids"][:2] != [1, 1]
        assert rec["template"] == "chat"


def test_the_instruction_template_without_a_chat_template(bare_model, queries, tmp_path):
    out = tmp_path / "s.zarr"
    assert profile_cli("--model", str(bare_model), "--dataset", queries, "--out", str(out)) == 0
    assert open_store(out).meta["template"] == "mathoctopus"
    rec = records(out)[1]
    assert rec["prompt"] == MATHOCTOPUS.format(language="Chinese", query="2加3等于多少？")
    assert rec["prompt_ids"][:2] == [1, rec["prompt_ids"][1]] and rec["prompt_ids"][1] != 1


def test_the_preset_wins_on_a_mathoctopus_named_model(chat_model, queries, tmp_path):
    named = tmp_path / "MistralMathOctopus-7B"
    shutil.copytree(chat_model, named)  # has a chat template, but the study's models use theirs
    out = tmp_path / "s.zarr"
    assert profile_cli("--model", str(named), "--dataset", queries, "--out", str(out)) == 0
    meta = open_store(out).meta
    assert meta["template"] == "mathoctopus" and meta["template_text"] == MATHOCTOPUS
    assert records(out)[0]["prompt"] == MATHOCTOPUS.format(language="English", query="What is 2+3?")
    assert config.template_for("kevinpro/MAPO-MistralMathOctopus-7B")[0] == "mathoctopus"
    assert config.template_for("lna:tiny-llama")[0] == "plain"


def test_a_rerun_with_another_template_refuses_to_mix(chat_model, queries, tmp_path, capsys):
    out = tmp_path / "s.zarr"
    assert profile_cli("--model", str(chat_model), "--dataset", queries, "--out", str(out),
                       "--template", "plain") == 0
    before = open_store(out)
    err = one_line_error(capsys, profile_cli("--model", str(chat_model), "--dataset", queries, "--out", str(out)))
    assert "template 'plain'" in err and "'chat'" in err
    after = open_store(out)
    assert (after.counts == before.counts).all() and after.meta == before.meta
    # the responses file alone (another store) refuses too, naming both templates
    err = one_line_error(capsys, profile_cli("--model", str(chat_model), "--dataset", queries,
                                             "--out", str(tmp_path / "t.zarr"),
                                             "--responses", str(responses.path_beside(out))))
    assert "made with prompt template 'plain', this run uses 'chat'" in err


def test_verbatim_prompts_are_recorded_as_verbatim(bare_model, tmp_path, capsys):
    path = tmp_path / "v.jsonl"
    path.write_text(json.dumps({"lang": "en", "instruction": "Q: 1+1=", "responses": [" 2"]}) + "\n")
    out = tmp_path / "s.zarr"
    assert profile_cli("--model", str(bare_model), "--dataset", str(path), "--out", str(out)) == 0
    meta = open_store(out).meta
    assert meta["template"] == "verbatim" and meta["template_text"] == ""
    assert records(out)[0]["prompt"] == "Q: 1+1=" and records(out)[0]["template"] == "verbatim"
    # a mix of verbatim prompts and queries names both
    qs = [data.Question("a", "en", prompt="Q: 1+1=", responses=["2"]), data.Question("b", "en", "1+2?")]
    _, plain = config.template_for("m", "plain")
    assert responses.template_record(qs, plain) == {"template": "plain+verbatim", "template_text": "{query}\n"}
    # --template has nothing to apply to verbatim prompts: said, not silently ignored
    assert run(profile, "lna-profile", ["--model", str(bare_model), "--dataset", str(path), "--out",
                                        str(tmp_path / "u.zarr"), "--template", "plain"]) == 0
    assert "--template plain is not applied" in capsys.readouterr().err


def test_a_template_file(bare_model, queries, tmp_path, capsys):
    good = tmp_path / "t.txt"
    good.write_text("[{language}] {query} => {{answer}}:", encoding="utf-8")
    out = tmp_path / "s.zarr"
    assert profile_cli("--model", str(bare_model), "--dataset", queries, "--out", str(out), "--template", str(good)) == 0
    assert records(out)[0]["prompt"] == "[English] What is 2+3? => {answer}:"
    assert open_store(out).meta["template_text"] == good.read_text()
    for text, why in [("no question here", "has no {query}"), ("{query} {answer}", "only {query} and {language}")]:
        bad = tmp_path / "bad.txt"
        bad.write_text(text)
        err = one_line_error(capsys, profile_cli("--model", str(bare_model), "--dataset", queries,
                                                 "--out", str(tmp_path / "b.zarr"), "--template", str(bad)))
        assert why in err
    err = one_line_error(capsys, profile_cli("--model", str(bare_model), "--dataset", queries,
                                             "--out", str(tmp_path / "b.zarr"), "--template", "nope"))
    assert "unknown prompt template 'nope'" in err and "mathoctopus, plain, chat" in err


def test_chat_asked_for_without_a_chat_template(bare_model, queries, tmp_path, capsys):
    err = one_line_error(capsys, profile_cli("--model", str(bare_model), "--dataset", queries,
                                             "--out", str(tmp_path / "s.zarr"), "--template", "chat"))
    assert "has no chat template" in err and not (tmp_path / "s.zarr").exists()


# -- Hugging Face details --------------------------------------------------------------------

@pytest.fixture
def hub_cache(tmp_path, bare_model, monkeypatch):
    """A local Hugging Face cache holding org/tiny at two commits: main and tag v1."""
    import huggingface_hub.constants

    root = tmp_path / "hub"
    repo = root / "models--org--tiny"
    for ref, commit in (("main", "a" * 40), ("v1", "b" * 40)):
        shutil.copytree(bare_model, repo / "snapshots" / commit)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root))
    return repo


def test_revision_resolves_through_the_local_cache_and_is_recorded(hub_cache, queries, tmp_path, capsys):
    assert loading.resolve("org/tiny").revision == "a" * 40
    assert loading.resolve("org/tiny", "v1").revision == "b" * 40
    out = tmp_path / "s.zarr"
    assert profile_cli("--model", "org/tiny", "--revision", "v1", "--dataset", queries, "--out", str(out)) == 0
    meta = open_store(out).meta
    assert meta["revision"] == "b" * 40 and meta["model"] == "org/tiny" and meta["model_name"] == "org/tiny"
    err = one_line_error(capsys, profile_cli("--model", "org/tiny", "--revision", "v9", "--dataset", queries,
                                             "--out", str(tmp_path / "t.zarr")))
    assert "org/tiny at revision v9 is not in the local Hugging Face cache" in err
    assert "huggingface-cli download org/tiny --revision v9" in err


def test_missing_or_gated_model_says_how_to_get_it(hub_cache):
    with pytest.raises(LnaError, match=r"org/gated is not in the local Hugging Face cache: download it with "
                                       r"`huggingface-cli download org/gated` \(gated models .* license accepted"):
        loading.resolve("org/gated")
    with pytest.raises(LnaError, match="revisions are for hub models"):
        loading.resolve("lna:tiny-llama", "main")


def test_titles_show_the_model_name_not_a_path(hub_cache, monkeypatch, tmp_path):
    from lna.identification import analysis
    from lna.reports import plots

    snapshot = str(hub_cache / "snapshots" / ("a" * 40))
    assert loading.display_name(snapshot) == "org/tiny"
    assert loading.display_name("org/tiny") == "org/tiny" and loading.display_name("lna:tiny-llama") == "lna:tiny-llama"
    assert loading.display_name(str(tmp_path / "tmpx8w2" / "my-model") + "/") == "my-model"
    assert loading.resolve(snapshot).display == "org/tiny"
    titles = []
    monkeypatch.setattr(plots, "layer_types", lambda types, path, title="": titles.append(title))
    monkeypatch.setattr(plots, "shared_by_n", lambda series, path, title="": titles.append(title))

    class Sets:
        source = {"model": snapshot, "model_name": None}
    monkeypatch.setattr(analysis, "layer_table", lambda ns: ([], []))
    monkeypatch.setattr(analysis, "shared_table", lambda ns: ([], []))
    monkeypatch.setattr(analysis, "language_table", lambda ns: ([], []))
    monkeypatch.setattr(analysis, "layer_types", lambda ns: {})
    monkeypatch.setattr(analysis, "shared_by_n", lambda ns: __import__("numpy").zeros((1, 2)))
    analysis.write_report(Sets(), tmp_path / "report")
    assert titles == ["org/tiny: neurons per layer", "org/tiny: neurons shared by N languages"]
