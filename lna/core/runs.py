"""An output folder belongs to one run: DIR/run.json records what made it (model, data,
settings), so a rerun resumes its own work there and never mixes in another run's."""
import json
from pathlib import Path

from lna.core import lock
from lna.core.atomic import atomic_file
from lna.core.errors import LnaError

RUN = "run.json"


def claim(out: Path, identity: dict, what: str, work: list[str]) -> None:
    """Record `identity` in DIR/run.json, or check it against the one there. `what` names the
    work in messages ("responses"); `work` are the files a run leaves in DIR: present without
    a run.json, they are an unknown run's, and nothing is resumed from them. DIR is locked
    (lna.core.lock) until the current lock scope ends: one run at a time writes it."""
    lock.acquire(out, what)
    run_file = out / RUN
    if run_file.is_file():
        try:
            kept = json.loads(run_file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError):
            kept = None
        if not isinstance(kept, dict):
            raise LnaError(f"{run_file}: unreadable, so {out} may hold {what} of another run; choose another -o, "
                           f"or delete {out} to start over")
        changed = [k for k in identity if kept.get(k) != identity[k]]
        if changed:
            raise LnaError(f"{out}: holds {what} of another run ({', '.join(changed)} differ); choose another -o, "
                           f"or delete {out} to start over")
        return
    found = [name for name in work if (out / name).exists()]
    if found:
        raise LnaError(f"{out / found[0]}: {what} of an unknown run (no {RUN}); choose another -o or delete it")
    with atomic_file(run_file) as tmp:  # makes DIR, and removes it again if this write fails
        tmp.write_text(json.dumps(identity, indent=1) + "\n", encoding="utf-8")


def out_folder(out, fix: str = "give an output folder with -o") -> Path:
    """`out` as a Path, refused in one line where it exists and is not a folder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LnaError(f"{out}: exists and is not a folder; {fix}")
    return out
