"""The crash-safety scenarios besides SIGKILL (reliability/crash_build.py runs them; so do the tests):

    disk_full            the builder saves onto a tmpfs too small for the new index
    read_only            the index folder is on a read-only mount
    concurrent_builders  a second builder on the same --out while the first one holds the lock
    builders_at_once     three builders started together on the same --out

Each returns one row: {"scenario", "outcome", "ok" (True, False, or None when the machine cannot run it),
"old_intact", "leftovers", "message"}. The tmpfs ones need root (mount); without it they say so and skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from reliability.common import REPO


def run_builder(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "index_store.cli", *args], cwd=REPO, capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=timeout)


def with_out(args: list[str], out: Path) -> list[str]:
    args = list(args)
    args[args.index("--out") + 1] = str(out)
    return args


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


@contextmanager
def tmpfs(mountpoint: Path, size_bytes: int):
    """A fresh tmpfs of size_bytes at mountpoint; yields False (and mounts nothing) where mounting is not allowed."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(mountpoint)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def disk_full(workdir: Path, args: list[str], out: Path, reference: dict) -> dict:
    from reliability.crash_build import check_index, leftovers

    row = {"scenario": "disk full while saving (tmpfs)"}
    mnt = workdir / "tmpfs-full"
    # Room for the old index and a little more, not for a second copy of index.faiss.
    with tmpfs(mnt, _tree_bytes(out) + 64 * 1024) as mounted:
        if not mounted:
            return {**row, "outcome": "skipped: cannot mount a tmpfs here (needs root)", "ok": None}
        target = mnt / "indexes" / out.name
        shutil.copytree(out, target)
        done = run_builder(with_out(args, target))
        message = _last_line(done.stderr)
        intact = check_index(target, reference)
        left = leftovers(target)
    ok = done.returncode == 1 and "No space left on device" in message and intact and not left
    return {**row, "outcome": f"exit {done.returncode}", "ok": ok, "old_intact": intact,
            "leftovers": ", ".join(left) or "-", "message": message}


def read_only(workdir: Path, args: list[str], out: Path, reference: dict) -> dict:
    from reliability.crash_build import check_index

    row = {"scenario": "index folder on a read-only mount"}
    mnt = workdir / "tmpfs-ro"
    with tmpfs(mnt, 4 * _tree_bytes(out) + 1024 * 1024) as mounted:
        if not mounted:
            return {**row, "outcome": "skipped: cannot mount a tmpfs here (needs root)", "ok": None}
        target = mnt / "indexes" / out.name
        shutil.copytree(out, target)
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        done = run_builder(with_out(args, target))
        message = _last_line(done.stderr)
        intact = check_index(target, reference)  # and the server can load from a read-only folder
    refused_early = "building" not in done.stderr  # it refused before reading a single image
    ok = done.returncode == 1 and "Read-only file system" in message and refused_early and intact
    return {**row, "outcome": f"exit {done.returncode}" + (", before building" if refused_early else ""),
            "ok": ok, "old_intact": intact, "leftovers": "-", "message": message}


def concurrent_builders(workdir: Path, args: list[str], out: Path, reference: dict) -> dict:
    """Builder A is frozen mid-build (holding the lock); builder B on the same --out must refuse; A then ends."""
    from reliability.crash_build import check_index, driver, leftovers

    first = driver("coreset:1:at", args)
    try:
        for line in first.stdout:
            if line.strip() == "FROZEN":
                break
        second = run_builder(args)
        first.stdin.write("\n")
        first.stdin.flush()
        first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    message = _last_line(second.stderr)
    intact, left = check_index(out, reference), leftovers(out)
    ok = (second.returncode == 1 and f"another patchcore-build-index (pid {first.pid})" in message
          and first.returncode == 0 and intact and not left)
    return {"scenario": "second builder while the first holds --out", "ok": ok,
            "outcome": f"first exit {first.returncode}, second exit {second.returncode}", "old_intact": intact,
            "leftovers": ", ".join(left) or "-", "message": message}


def builders_at_once(workdir: Path, args: list[str], out: Path, reference: dict, n: int = 3) -> dict:
    """n builders started together: each either wins or refuses with the lock message; the index ends whole."""
    from reliability.crash_build import check_index, leftovers

    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-m", "index_store.cli", *args], cwd=REPO, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(n)]
    results = [(p.wait(timeout=600), p.communicate()[1]) for p in procs]
    wins = sum(code == 0 for code, _ in results)
    refusals = [_last_line(err) for code, err in results if code != 0]
    clear = all("another patchcore-build-index" in m for m in refusals)
    intact, left = check_index(out, reference), leftovers(out)
    return {"scenario": f"{n} builders started together", "ok": wins >= 1 and clear and intact and not left,
            "outcome": f"{wins} built, {len(refusals)} refused", "old_intact": intact,
            "leftovers": ", ".join(left) or "-", "message": refusals[0] if refusals else ""}
