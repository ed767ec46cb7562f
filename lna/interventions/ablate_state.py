"""lna-ablate's resumable measurement: per-sample NLLs of every mask in DIR/nll.npz.

NaN marks a cell not yet computed. The file is rewritten atomically once `checkpoint_every`
seconds have passed since the last save (checked after every batch) and when the run stops
(error, Ctrl-C, SIGTERM). It records the run's identity (model, dtype, backend, masks,
samples): a rerun with others is refused in one line, the same run computes only the
missing cells. Shared by the dense and the mixture-of-experts runs (lna.interventions.ablate).
"""
import hashlib
import json
from pathlib import Path

import numpy as np

from lna.core.atomic import atomic_file
from lna.core.checkpoint import Checkpointer
from lna.core.errors import LnaError
from lna.core.progress import Bar
from lna.inputs import responses
from lna.interventions.masked_nll import evaluate, predicted

STATE = "nll.npz"


def start(out: Path, model_identity: dict, masks_digest: str, samples, n_forward: int) -> tuple:
    """(state file, run identity, nll [n_forward, samples]): a fresh table, or the kept one of
    the same run."""
    identity = {**model_identity, "masks": masks_digest, "samples": samples_digest(samples)}
    state = out / STATE
    return state, identity, resume(state, identity, n_forward, len(samples))


def measure(runner, samples, p, nll: np.ndarray, state: Path, identity: dict, opts) -> np.ndarray:
    """Fill the NaN cells of `nll` batch by batch; save the state by time and on any stop
    (error, Ctrl-C, SIGTERM) so that finished batches are never lost."""
    tokens = np.array([predicted(s) for s in samples])
    # evaluate fills nll in place: each save writes every cell finished so far
    saver = Checkpointer(lambda: save_state(state, nll, samples, identity, p), every=opts.checkpoint_every)

    with Bar(opts.progress, int((np.isnan(nll) * tokens).sum()), "ablate", "tok") as bar:
        def on_chunk(_, n_tokens):
            saver.changed()
            bar.update(n_tokens)
            saver.tick()

        with saver.on_stop():
            nll = evaluate(runner, samples, p.masks, nll=nll, token_budget=opts.token_budget, on_chunk=on_chunk)
        saver.flush()
    return nll



def mask_digest(masks: np.ndarray) -> str:
    h = hashlib.sha256(str(masks.shape).encode())
    h.update(np.packbits(masks).tobytes())
    return "sha256:" + h.hexdigest()[:32]


def samples_digest(samples) -> str:
    by_lang: dict = {}
    for s in samples:
        by_lang.setdefault(s.lang, []).append(s)
    return hashlib.sha256(json.dumps({k: responses.digest(v) for k, v in by_lang.items()}).encode()).hexdigest()[:32]


def resume(state: Path, identity: dict, n_rows: int, n_samples: int) -> np.ndarray:
    fresh = np.full((n_rows, n_samples), np.nan)
    if not state.exists():
        return fresh
    try:
        with np.load(state) as z:
            kept, nll = json.loads(str(z["identity"])), z["nll"]
    except Exception:  # torn or foreign file: say so rather than guess
        raise LnaError(f"{state}: not a readable lna-ablate state; delete it to start over") from None
    what = {"model_fingerprint": "model", "dtype": "dtype", "backend": "backend",
            "masks": "neuron sets or --setting", "samples": "responses or --langs/--limit"}
    changed = [what.get(k, k) for k in identity if kept.get(k) != identity[k]]
    if changed or nll.shape != fresh.shape:
        raise LnaError(f"{state.parent}: holds a run with other {', '.join(changed) or 'settings'}; "
                       f"choose another -o or delete {state} to start over")
    return nll.astype(np.float64)


def save_state(state: Path, nll: np.ndarray, samples, identity: dict, p) -> None:
    """Per-sample NLLs, written atomically (a kill leaves the previous state intact)."""
    names = [[] for _ in range(p.n_forward - 1)]  # p.masks may be ExpertMasks (expert_ablate)
    for name, ids in p.ids.items():
        for lang, m in ids.items():
            if m >= 0:
                names[m].append(f"{name}/{lang}")
    with atomic_file(state) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, nll=nll, keys=np.array([s.key for s in samples]),
                 langs=np.array([s.lang for s in samples]), tokens=np.array([predicted(s) for s in samples]),
                 rows=np.array(["baseline"] + [",".join(n) for n in names]),
                 identity=np.array(json.dumps(identity)))
