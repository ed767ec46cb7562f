"""The one config mechanism: YAML presets in configs/ (shipped as lna.configs), and prompt templates.

A prompt template is `mathoctopus` (the study's instruction template), `plain`, `chat` (the
tokenizer's own chat template: the instruction as the user turn, the generation prompt
appended), another name in configs/models.yaml, or a file holding a `str.format` text with
`{query}` (and optionally `{language}`, the English name). The default is the preset of
configs/models.yaml whose glob matches the model, else `chat` where the tokenizer has a
chat template, else `mathoctopus`. Prompts given verbatim by the data get no template: they
are recorded as `verbatim`.
"""
import fnmatch
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import yaml

from lna.core.errors import LnaError

INSTRUCTION = "mathoctopus"  # the default for a tokenizer without a chat template
VERBATIM = "verbatim"  # what the record says where the data's prompt was used as is
# Chat templates that print today's date (Llama 3.2) would change the prompt, hence the
# tokens, from one day to the next; they get the date Llama 3.1's template defaults to.
CHAT_DATE = "26 Jul 2024"


@lru_cache(maxsize=None)
def load(name: str) -> dict:
    """Read configs/<name>.yaml."""
    try:
        text = resources.files("lna.configs").joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LnaError(f"no preset file configs/{name}.yaml") from None
    return yaml.safe_load(text) or {}


@dataclass(frozen=True)
class Template:
    name: str  # "mathoctopus", "plain", "chat", another configs/models.yaml name, or a file path
    text: str  # str.format text with {query} and {language}; for chat, the user turn
    tokenizer: object = None  # chat: the tokenizer whose chat template wraps the user turn

    def render(self, language: str, query: str) -> str:
        """The prompt for `query` in `language` (an English name, as in the study's template)."""
        user = self.text.format(language=language, query=query)
        if self.name != "chat":
            return user
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True, date_string=CHAT_DATE)

    @property
    def applied(self) -> str:
        """The exact text applied, for the store and responses records: for chat, the
        rendered chat template around the user turn's text."""
        if self.name != "chat":
            return self.text
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": self.text}], tokenize=False, add_generation_prompt=True,
            date_string=CHAT_DATE)


def template_for(model: str, name: str | None = None, tokenizer=None) -> tuple[str, Template]:
    """(name, template) for a model: the named one (`--template`), else the model's preset,
    else chat where `tokenizer` has a chat template, else the instruction template."""
    cfg = load("models")
    templates = cfg["templates"]
    if name is None:
        for entry in cfg["models"]:
            if fnmatch.fnmatch(model.lower(), entry["match"].lower()):
                name = entry["template"]
                break
        else:
            name = "chat" if getattr(tokenizer, "chat_template", None) else INSTRUCTION
    if name == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise LnaError(f"--template chat: the tokenizer of {model} has no chat template; "
                           f"use --template {INSTRUCTION}, plain or a file")
        return name, Template(name, templates["chat"], tokenizer)
    if name in templates:
        return name, Template(name, templates[name])
    path = Path(name).expanduser()
    if not path.is_file():
        raise LnaError(f"unknown prompt template {name!r}: use one of {', '.join(templates)} or a file "
                       f"holding a template with {{query}} (and optionally {{language}})")
    try:
        text = path.read_text(encoding="utf-8")
        text.format(language="English", query="?")
    except UnicodeDecodeError:
        raise LnaError(f"{path}: not UTF-8 text; a template file holds text with {{query}}") from None
    except (KeyError, IndexError, ValueError) as e:
        raise LnaError(f"{path}: not a template: only {{query}} and {{language}} may be in braces "
                       f"(double literal braces: {{{{ }}}}); {type(e).__name__}: {e}") from None
    if "{query}" not in text:
        raise LnaError(f"{path}: the template has no {{query}}; the question would be left out")
    return str(path), Template(str(path), text)
