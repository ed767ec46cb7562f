"""Fault injection, the output rule and the output locks (lna.core.atomic.output_path, lna.core.lock).

- an output that is a device node (a character device made with mknod, as /dev/null is), a
  FIFO or a socket -> every writer (lna-identify -o and --export-pt, lna-profile --out and
  --responses, lna merge -o, lna import-counts -o, lna-report / lna-compare / lna-ablate -o)
  refuses in one line; the node is untouched (same type, same device numbers), nothing is
  written beside it, and nothing blocks on the FIFO
- an output that is a symlink (a file, a store folder, a dangling link) -> written through to
  its target: the link stays a link, the target holds the output, no hidden `.X.previous`
  or temporary is left beside either (a resumed store too)
- two real lna-profile processes on one --out (sampling mode): the second exits at once in
  one line naming the first's PID; the output equals one run's, one record per key
- a lock held by another process (merge -o): one line naming its PID, nothing written
- a stale lock (its process is gone): taken over with a note; no lock file stays after a run
"""
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from faults.faultkit import REPO, one_line, only, write_jsonl
from lna.storage.store import open_store


def _device(path: Path) -> Path:
    os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # the numbers of /dev/null
    return path


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _socket(path: Path) -> Path:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()
    return path


NODES = {"device": (_device, stat.S_ISCHR), "FIFO": (_fifo, stat.S_ISFIFO), "socket": (_socket, stat.S_ISSOCK)}

COMMANDS = {  # NODE: the special file given as the output
    "identify -o": ["identify", "{store}", "-o", "NODE"],
    "identify --export-pt": ["identify", "{store}", "-o", "{tmp}/n.json", "--export-pt", "NODE"],
    "profile --out": ["profile", "-q", "--model", "{model}", "--dataset", "{data}", "--out", "NODE"],
    "profile --responses": ["profile", "-q", "--model", "{model}", "--dataset", "{data}", "--out", "{tmp}/p.zarr",
                            "--responses", "NODE"],
    "merge -o": ["merge", "{store}", "-o", "NODE"],
    "report -o": ["report", "{neurons}", "-o", "NODE"],
    "compare -o": ["compare", "{neurons}", "{neurons}", "-o", "NODE"],
    "ablate -o": ["ablate", "-q", "--model", "{model}", "--neurons", "{neurons}", "--responses", "{responses}",
                  "-o", "NODE"],
}


@pytest.fixture
def alarm():
    """A command blocked on a FIFO would hang the suite: fail it after 120 s instead."""
    def timeout(signum, frame):
        raise TimeoutError("blocked on the output (a FIFO?)")
    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# every writer with a device and a FIFO; sockets (the same check) with a file, a store and a folder
CASES = [(c, k) for c in COMMANDS for k in ("device", "FIFO")] + [
    (c, "socket") for c in ("identify -o", "profile --out", "report -o")]


@pytest.mark.parametrize("command, kind", CASES)
def test_special_file_as_output_is_refused_untouched(command, kind, made, model, tmp_path, lna, alarm):
    make, is_kind = NODES[kind]
    node = make(tmp_path / "node")
    before = os.lstat(node)
    where = {"store": made["store"], "model": model, "data": made["data"], "neurons": made["neurons"],
             "responses": made["responses"], "tmp": tmp_path}
    argv = [a.format(**where).replace("NODE", str(node)) for a in COMMANDS[command]]
    words = {"device": "is a device", "FIFO": "is a FIFO", "socket": "is a socket"}[kind]
    line = one_line(lna(*argv), str(node), words)
    assert "untouched" in line or "not a folder" in line or "not a file or folder" in line, line
    after = os.lstat(node)
    assert is_kind(after.st_mode) and after.st_ino == before.st_ino and after.st_rdev == before.st_rdev
    only(tmp_path, "node")  # no output, no temporary, no lock beside it


def test_dev_null_itself_stays_a_device(made, lna):
    """The case of the report, as root: lna-identify -o /dev/null used to rename a file over it."""
    before = os.stat("/dev/null")
    one_line(lna("identify", made["store"], "-o", "/dev/null"), "/dev/null", "is a device")
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev and after.st_ino == before.st_ino


def test_symlinked_outputs_are_written_through(made, model, tmp_path, lna):
    targets, links = tmp_path / "targets", tmp_path / "links"
    targets.mkdir(), links.mkdir()
    (targets / "n.json").write_text("old", encoding="utf-8")
    (links / "n.json").symlink_to(targets / "n.json")
    (links / "m.pt").symlink_to(targets / "m.pt")  # dangling: the target is created
    rc, _, err = lna("identify", made["store"], "-o", links / "n.json", "--export-pt", links / "m.pt",
                     "--top-rate", "0.05")
    assert rc == 0, err
    assert (links / "n.json").is_symlink() and (links / "m.pt").is_symlink()
    assert (targets / "n.json").read_text(encoding="utf-8") == made["neurons"].read_text(encoding="utf-8")
    assert (targets / "m.pt").stat().st_size > 0
    # a store through a link, written and then resumed: the link stays, no .previous anywhere
    (targets / "s.zarr").mkdir()
    (targets / "s.zarr").rmdir()
    (links / "s.zarr").symlink_to(targets / "s.zarr", target_is_directory=True)
    args = ["-q", "--model", model, "--dataset", made["data"], "--out", links / "s.zarr", "--checkpoint-every", "0"]
    assert lna("profile", *args)[0] == 0
    assert lna("profile", *args)[0] == 0  # the rerun opens and rewrites it through the link
    assert (links / "s.zarr").is_symlink() and (targets / "s.zarr").is_dir()
    want, got = open_store(made["store"]), open_store(targets / "s.zarr")
    assert np.array_equal(want.counts, got.counts) and np.array_equal(want.tokens, got.tokens)
    only(links, "n.json", "m.pt", "s.zarr", "s.responses.jsonl")  # the responses file: beside the --out given
    only(targets, "n.json", "m.pt", "s.zarr")


# -- locks --------------------------------------------------------------------------------------------
SLOW_SAMPLING = """
import sys, time
from pathlib import Path
from lna.runners.hf import HFRunner

real = HFRunner.generate_counting
def slow(*args, **kwargs):  # sampling waits until the test has run the second profile
    Path("sampling").write_text("1")
    deadline = time.monotonic() + 300
    while not Path("go").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return real(*args, **kwargs)
HFRunner.generate_counting = slow
from lna.cli import profile_main
profile_main(sys.argv[1:])
"""


def test_two_profiles_on_one_output(model, tmp_path, lna, monkeypatch):
    data = write_jsonl(tmp_path / "q.jsonl", [{"lang": lang, "query": f"What is {i}+1?"}
                                              for lang in ("en", "de") for i in range(5)])
    args = ["-q", "--model", model, "--dataset", data, "-n", "2", "--max-new-tokens", "6"]
    assert lna("profile", *args, "--out", tmp_path / "one" / "s.zarr")[0] == 0
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    work = tmp_path / "two"
    work.mkdir()
    first = subprocess.Popen([sys.executable, "-c", SLOW_SAMPLING, *map(str, args), "--out", "s.zarr"],
                             cwd=work, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (work / "sampling").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, first.stderr.read()
        start = time.monotonic()
        second = subprocess.run([sys.executable, "-c", "from lna.cli import profile_main; profile_main()",
                                 *map(str, args), "--out", "s.zarr"], cwd=work, env=env, capture_output=True,
                                text=True, timeout=120)
        assert time.monotonic() - start < 60  # at once: no model loaded, nothing sampled
        (work / "go").write_text("1")
        one_line((second.returncode, second.stdout, second.stderr), "s.zarr", "in use by another lna run",
                 f"PID {first.pid}")
        _, err = first.communicate(timeout=300)
        assert first.returncode == 0, err
    finally:
        first.kill()
    a, b = open_store(tmp_path / "one" / "s.zarr"), open_store(work / "s.zarr")
    assert a.complete and b.complete
    assert np.array_equal(a.counts, b.counts) and np.array_equal(a.tokens, b.tokens)
    keys = [json.loads(x)["key"] for x in (work / "s.responses.jsonl").read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 10
    assert (work / "s.responses.jsonl").read_bytes() == (tmp_path / "one" / "s.responses.jsonl").read_bytes()
    only(work, "s.zarr", "s.responses.jsonl", "sampling", "go")


def test_lock_held_by_another_process(made, tmp_path, lna):
    out = tmp_path / "m.zarr"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(tmp_path / '.m.zarr.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.write(fd, f'{os.getpid()}\\n'.encode())\n"
        "print('held', flush=True)\n"
        "time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        one_line(lna("merge", made["store"], "-o", out), "m.zarr", f"PID {holder.pid}", "in use")
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_is_taken_over_with_a_note(made, model, tmp_path, lna):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    (tmp_path / ".s.zarr.lock").write_text(f"{dead}\n")  # left by a run killed with SIGKILL
    rc, _, err = lna("profile", "-q", "--model", model, "--dataset", made["data"], "--out", tmp_path / "s.zarr")
    assert rc == 0 and err.count("\n") == 1 and f"took over the lock of lna run PID {dead}" in err, err
    only(tmp_path, "s.zarr", "s.responses.jsonl")  # the lock file went with the run
