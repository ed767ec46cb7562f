"""lna-steer's inputs: the prompts (the dataset's questions or a file), the reference
responses in both languages (for the perplexities), and the check that both come from one
prompt template."""
from pathlib import Path

from lna.core.errors import LnaError, note
from lna.inputs import data, responses


def questions_of(opts) -> list:
    if opts.prompts:
        path = Path(opts.prompts)
        if not path.is_file():
            raise LnaError(f"--prompts {path}: no such file (one question a line)")
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not lines:
            raise LnaError(f"--prompts {path}: no questions in it (one a line)")
        return [data.Question(f"prompts/{i}", opts.source, line) for i, line in enumerate(lines[:opts.limit])]
    return data.load(opts.dataset, opts.source, limit=opts.limit)[1]


def references_of(opts, say) -> list:
    """Questions with reference responses in X and Y (for the perplexities), or []."""
    spec = opts.responses or str(responses.path_beside(opts.store))
    if opts.responses is None and not Path(spec).is_file():
        spec = opts.dataset if not opts.prompts else None
    if spec is None:
        return []
    try:
        _, qs = data.load(spec, f"{opts.source},{opts.target}", limit=opts.limit)
    except LnaError as err:
        if opts.responses:
            raise
        note(f"no reference responses in {opts.source} and {opts.target} ({err}): ppl_source and ppl_target "
             "are left out; give --responses")
        return []
    qs = [q for q in qs if q.responses]
    if {q.lang for q in qs} != {opts.source, opts.target}:
        if opts.responses:
            raise LnaError(f"{spec}: no responses in {opts.source} or {opts.target}; ppl_source and ppl_target "
                           "need both")
        note(f"{spec} has no responses in both {opts.source} and {opts.target}: ppl_source and ppl_target are left out")
        return []
    say(f"reference responses: {spec}")
    return qs


def check_templates(questions, references, template, opts) -> dict:
    """The prompt templates of the prompts and of the references; one line where they differ."""
    mine = sorted({responses.template_of(q, template) for q in questions})
    theirs = sorted({responses.template_of(q, template) for q in references})
    if references and mine != theirs and not opts.allow_template_mismatch:
        raise LnaError(f"the prompts use template {'+'.join(mine)} but the reference responses were made with "
                       f"{'+'.join(theirs)}: their perplexities would compare two formats; pass --template "
                       f"{theirs[0]} (or other --responses), or --allow-template-mismatch to steer anyway")
    return {"prompts": "+".join(mine), "references": "+".join(theirs) if references else None}
