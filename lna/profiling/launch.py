"""lna launch: the N shards of one profile as Ray tasks over a cluster's GPUs (or CPUs),
merged at the end into exactly the store of one run.

Each task runs lna-profile's driver (lna.profiling.profile.run) with --shard K/N into
SHARD_DIR/shard-K-of-N.zarr (its responses beside it), on storage every node sees, and asks
Ray for G GPUs (or C CPUs); Ray places the tasks on the cluster. A task whose worker dies
(killed, out of memory, a lost node) or that raises an unexpected error is re-run by Ray
(max_retries, retry_exceptions) and resumes its shard's store from the last checkpoint,
counting each sample once (lna.profiling.profile). A user error (LnaError: a bad model path, ...)
would fail every time: the task returns it instead of raising, so it is not retried. Tasks
report their tokens to a Ray actor that the driver polls for one progress bar. When all
are done, lna.profiling.merge sums the shard stores into --out, and their responses files are
joined beside it. Rerunning the same command resumes: finished shards redo nothing.
Ray is imported only here (extra `lna[ray]`).
"""
import os
import signal
import socket
import sys
from dataclasses import replace
from pathlib import Path

from lna.core.atomic import writing
from lna.core.errors import LnaError, first_line
from lna.core.progress import sayer
from lna.profiling.profile import Options, default_out

# Tests: shard K's worker SIGKILLs itself once, after its store's first checkpoint, to show
# that Ray's retry resumes it without counting anything twice.
KILL_ENV = "LNA_TEST_KILL_SHARD"
INSTALL = "pip install 'lna[ray]'"


def shard_dir(out: Path) -> Path:
    """The default folder of the shard stores: beside --out (X.zarr -> X.shards)."""
    stem = out.name[: -len(".zarr")] if out.name.endswith(".zarr") else out.name
    return out.with_name(f"{stem}.shards")


def shard_path(folder: Path, k: int, n: int) -> Path:
    return Path(folder) / f"shard-{k:0{len(str(n))}d}-of-{n}.zarr"


def run(opts: Options, shards: int, *, address: str | None = None, gpus_per_shard: float | None = None,
        cpus_per_shard: float = 1.0, folder=None, retries: int = 3) -> dict:
    """Profile `shards` shards as Ray tasks and merge them into opts.out. Uses the Ray
    instance this process is connected to, else connects to `address` (None: starts one
    on this machine). Returns {"out": path, "shards": {k: progress record}}."""
    out = Path(opts.out) if opts.out else default_out(opts.model, opts.dataset)
    if out.exists():
        raise LnaError(f"{out}: already exists; choose another --out, or remove it to launch again")
    folder = Path(folder) if folder else shard_dir(out)
    ray = _import_ray()
    started, refs = _connect(ray, address, opts.progress), {}
    made = not folder.exists()
    try:
        gpus = _gpus(ray, gpus_per_shard)
        if not gpus and opts.device is None:
            opts = replace(opts, device="cpu")
        paths = {k: shard_path(folder, k, shards) for k in range(1, shards + 1)}
        with writing(folder):
            folder.mkdir(parents=True, exist_ok=True)
        kill = os.environ.get(KILL_ENV)
        tracker = ray.remote(num_cpus=0)(Progress).remote(shards)
        task = ray.remote(_profile_shard).options(num_gpus=gpus, num_cpus=cpus_per_shard, max_retries=retries,
                                                  retry_exceptions=True)
        refs = {task.remote(replace(opts, shard=f"{k}/{shards}", out=str(p), responses=None, progress=False,
                                    report=None), k, tracker, kill == str(k)): k for k, p in paths.items()}
        say = sayer(opts.progress)
        say(f"launched {shards} shards on Ray ({_resources(gpus, cpus_per_shard)} each) -> {folder}")
        failures, state = _wait(ray, refs, tracker, shards, retries, opts.progress)
        if failures:
            k, more, done = min(failures), len(failures) - 1, shards - len(failures)
            raise LnaError(f"shard {k}/{shards} failed: {failures[k]}"
                           + (f" (and {more} more shard{'s' if more > 1 else ''})" if more else "")
                           + (f"; {done} of {shards} shards are finished in {folder}" if done else "")
                           + "; fix the cause and run the same command again to resume (finished shards redo "
                             "nothing)")
    except KeyboardInterrupt:
        _stop(ray, list(refs))
        raise
    finally:
        if started:
            ray.shutdown()
        if made and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # nothing began: leave nothing behind
    for k, p in paths.items():
        if not p.exists():
            raise LnaError(f"{p}: shard {k}/{shards}'s store is not there although its task finished: the shard "
                           "folder must be on storage every node of the cluster sees (--shard-dir)")
    from lna.profiling import merge

    merge.run([paths[k] for k in sorted(paths)], out)
    _join_responses(paths, out, opts.dataset)
    say(f"merged {shards} shards into {out}")
    return {"out": out, "shards": state}


class Progress:
    """A Ray actor: what each shard's task reports (attempts, where it runs, tokens done and
    total, and the tokens its store held when the last attempt began: a resumed checkpoint)."""

    def __init__(self, n: int):
        self.shards = {k: {"attempts": 0, "where": None, "done": 0, "total": None, "resumed": None}
                       for k in range(1, n + 1)}

    def start(self, k: int, where: str) -> None:
        self.shards[k].update(attempts=self.shards[k]["attempts"] + 1, where=where, resumed=None)

    def tokens(self, k: int, done: int, total: int) -> None:
        s = self.shards[k]
        s.update(done=done, total=total, resumed=done if s["resumed"] is None else s["resumed"])

    def snapshot(self) -> dict:
        return self.shards


def _profile_shard(opts: Options, k: int, tracker, kill: bool):
    """One Ray task: shard K's lna-profile. Returns None, or a user error's message."""
    import ray

    from lna.profiling import profile

    ray.get(tracker.start.remote(k, f"{socket.gethostname()}:{os.getpid()}"))
    out = Path(opts.out)
    marker = out.with_name(f".{out.name}.killed")

    def report(done, total):
        tracker.tokens.remote(k, done, total)  # no wait: a batch never waits for the progress bar
        if kill and out.exists() and not marker.exists():  # tests only (KILL_ENV)
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)

    try:
        profile.run(replace(opts, report=report))
    except LnaError as err:
        return str(err)
    finally:  # an actor runs one caller's calls in order: the reports before this are in
        ray.get(tracker.snapshot.remote())
    return None


def _wait(ray, refs: dict, tracker, n: int, retries: int, show: bool) -> tuple:
    """Wait for every task, showing overall progress; ({k: why it failed}, last state)."""
    from tqdm import tqdm

    failures, pending, state = {}, list(refs), {}
    bar = tqdm(total=0, desc="count", unit="tok", unit_scale=True, file=sys.stderr, dynamic_ncols=True,
               disable=not show)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
            for ref in ready:
                k = refs[ref]
                try:
                    err = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    err = f"{_why(exc)} (tried {retries + 1} times)"
                if err:
                    failures[k] = err
            state = ray.get(tracker.snapshot.remote())
            _show(bar, state, n - len(pending), n)
    finally:
        bar.close()
    return failures, state


def _show(bar, state: dict, finished: int, n: int) -> None:
    totals = [s["total"] for s in state.values()]
    # the overall total is known once every shard has prepared its samples
    bar.total = None if None in totals else max(sum(totals), 1)
    bar.n = sum(s["done"] for s in state.values())
    retried = sum(s["attempts"] > 1 for s in state.values())
    bar.set_postfix_str(f"shards {finished}/{n} done" + (f", {retried} retried" if retried else ""), refresh=False)
    bar.refresh()


def _why(exc) -> str:
    """One line for a task that failed in Ray (its worker died, or an error past its retries)."""
    name = type(exc).__name__
    if "WorkerCrashed" in name or "Died" in name or "NodeDied" in name or "OutOfMemory" in name:
        return f"its worker process died ({name}: killed, out of memory, or its node was lost)"
    cause = getattr(exc, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {first_line(cause)}"
    return f"{name}: {first_line(exc)}"


def _stop(ray, refs: list) -> None:
    """Ctrl-C: the tasks get KeyboardInterrupt and checkpoint (lna.profiling.profile); give them a moment."""
    for ref in refs:
        try:
            ray.cancel(ref)
        except Exception:  # noqa: BLE001 - finished or already cancelled
            pass
    try:
        ray.wait(refs, num_returns=len(refs), timeout=30)
    except Exception:  # noqa: BLE001
        pass


def _import_ray():
    try:
        import ray
    except ImportError:
        raise LnaError(f"lna launch needs Ray, which is not installed: {INSTALL}") from None
    return ray


def _connect(ray, address: str | None, verbose: bool) -> bool:
    """Connect to Ray (True when this call did, so the caller disconnects)."""
    import logging

    if ray.is_initialized():
        return False
    if address and address not in ("auto", "local") and not address.startswith("ray://"):
        _reachable(address)  # ray.init would retry an unreachable address for minutes
    try:
        ray.init(address=address, log_to_driver=True, logging_level=logging.INFO if verbose else logging.ERROR)
    except (ConnectionError, ValueError, RuntimeError, TimeoutError) as err:
        where = f"at {address}" if address else "on this machine"
        auth = ("; a cluster with token authentication (Ray's default) needs RAY_AUTH_MODE=token and its token "
                "(~/.ray/auth_token or RAY_AUTH_TOKEN) for an address given explicitly"
                if address not in (None, "auto") and "RAY_AUTH_MODE" not in os.environ else "")
        raise LnaError(f"could not connect to a Ray cluster {where} ({first_line(err)}); start one with "
                       f"`ray start --head` and give its address (host:6379, or auto on one of its nodes){auth}"
                       ) from None
    return True


def _reachable(address: str, timeout: float = 10.0) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise LnaError(f"--ray {address}: give the cluster's address as host:port (e.g. 10.0.0.1:6379), auto "
                       "(the cluster this machine belongs to) or ray://host:10001")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        raise LnaError(f"cannot reach the Ray cluster at {address} ({err.strerror or type(err).__name__}); start it "
                       "(`ray start --head` on its head node) or check the address") from None


def _gpus(ray, wanted: float | None) -> float:
    """GPUs per shard: as asked, or 1 where the cluster has GPUs, else 0 (CPU)."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    most = max((r.get("GPU", 0) for r in nodes), default=0)
    if wanted is None:
        return 1.0 if most else 0.0
    if wanted > most:
        raise LnaError(f"--gpus-per-shard {wanted:g}: no node of the Ray cluster has that many GPUs (the most is "
                       f"{most:g}); lower it (lna launch does not wait for an autoscaler to add nodes)")
    return wanted


def _resources(gpus: float, cpus: float) -> str:
    return f"{gpus:g} GPU" if gpus else f"{cpus:g} CPU"


def _join_responses(paths: dict, out: Path, dataset: str) -> None:
    """The shards' responses files joined, shard by shard, into the one beside --out (as
    one run writes it), unless that file is the data itself."""
    from lna.inputs import responses
    from lna.core.atomic import atomic_file

    target = responses.path_beside(out)
    if Path(dataset).exists() and Path(dataset).resolve() == target.resolve():
        return
    import shutil

    with atomic_file(target) as tmp, open(tmp, "wb") as fh:
        for k in sorted(paths):
            part = responses.path_beside(paths[k])
            if part.exists():
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, fh)
