"""Crash-safe builds: SIGKILL patchcore-build-index at random points of every stage and of the save, then check.

For each point: a builder replacing an existing index (--force) is killed there (reliability/crash_driver.py
freezes it at the point, or lets it run on for a random delay), and then
  1. the index at --out still loads, with the same index.faiss sha256 and the same image scores as before;
  2. the server's discovery sees only that index (the dead builder's temporary folders are ignored);
  3. the next build succeeds, leaves nothing behind but the lock file, and gives the same scores again.
Then: the disk full while saving (a small tmpfs), a read-only index folder (the tmpfs remounted read-only), and
concurrent builders on the same --out (one holds the lock, the other refuses). Loopback and local files only.

    python -m reliability.crash_build                 # 20 random points (seeded), the extra scenarios, a table
    python -m reliability.crash_build --points 4      # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from reliability.common import REPO, save_result
from reliability.crash_scenarios import builders_at_once, concurrent_builders, disk_full, read_only

# The stage each probe belongs to (embed: extract until the coreset ran, then calibration).
STAGE = {"load_model": "load_model", "coreset": "coreset", "index": "index", "calibrate": "calibration",
         "write_index": "save", "fsync": "save", "metadata": "save", "exchange": "save", "remove_tree": "save"}
# One point per stage and per step of the save, always; the rest of the points are drawn at random.
COVER = [("load_model", 1, "pass"), ("embed", 2, "pass"), ("coreset", 1, "at"), ("index", 1, "after"),
         ("calibrate", 1, "at"), ("write_index", 1, "at"), ("write_index", 1, "after"), ("metadata", 1, "at"),
         ("fsync", 2, "after"), ("exchange", 1, "at"), ("exchange", 1, "after"), ("remove_tree", 1, "at")]
COUNTS = {"embed": 6, "calibrate": 2, "fsync": 2}  # how many calls a demo build makes (batch size 2)


@dataclass
class CrashPoint:
    target: str  # probe:count:mode
    delay_ms: int  # for mode pass: how long it ran on before the kill
    landed: str  # the last probe the builder announced before it died
    stage: str
    killed: bool  # False: it finished before the kill came
    leftovers: list[str]  # dot entries next to --out after the kill (the lock file aside)
    old_loads_identical: bool
    server_sees: list[str]
    rebuild_ok: bool
    rebuild_leftovers: list[str]
    rebuild_identical: bool

    @property
    def survived(self) -> bool:
        return (self.old_loads_identical and self.server_sees == ["disc"] and self.rebuild_ok
                and not self.rebuild_leftovers and self.rebuild_identical)


def build_args(data: Path, out: Path) -> list[str]:
    """The demo build: a 128-pixel pretrained MobileNetV2, batches of 2 so that extraction has several steps."""
    return ["--data", str(data), "--out", str(out), "--force", "--image-size", "128", "--coreset-ratio", "0.1",
            "--batch-size", "2", "--threads", "1", "--no-progress"]


def driver(target: str, args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-u", "-m", "reliability.crash_driver", target, "--", *args],
                            cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def kill_at(target: str, delay_ms: int, args: list[str]) -> tuple[list[str], bool]:
    """Run the builder until the point, SIGKILL it there (or delay_ms later); returns (probes seen, killed)."""
    name, count, mode = target.split(":")
    proc, seen = driver(target, args), []
    try:
        for line in proc.stdout:
            seen.append(line.strip())
            if mode != "pass" and line.strip() == "FROZEN":
                break
            if mode == "pass" and line.strip() == f"PROBE {name} {count}":
                time.sleep(delay_ms / 1e3)
                break
        killed = proc.poll() is None
        if killed:
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
        seen += out.split("\n") if out else []
        return [s for s in seen if s.startswith("PROBE")], killed and proc.returncode == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def stage_of(probes: list[str]) -> tuple[str, str]:
    """(last probe announced, its stage)."""
    stage, last = "start", "none"
    for line in probes:
        _, name, _count = line.split()
        last = f"{name}:{_count}"
        stage = STAGE.get(name, "calibration" if stage in ("coreset", "index", "calibration") else "extract")
    return last, stage


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock"))


def check_index(out: Path, reference: dict) -> bool:
    """The index at out loads and gives exactly the reference's sha256 and scores."""
    from index_store import store

    try:
        bundle = store.load(out)
    except store.IndexStoreError:
        return False
    scores = [s.image_score for s in bundle.detector.score_batch(reference["images"])]
    return bundle.metadata.index_sha256 == reference["sha256"] and scores == reference["scores"]


def rebuild(args: list[str]) -> bool:
    done = subprocess.run([sys.executable, "-m", "index_store.cli", *args], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=600)
    return done.returncode == 0


def reference_of(out: Path, test_images: list[Path]) -> dict:
    from imaging.decode import read_image
    from index_store import store

    bundle = store.load(out)
    images = [read_image(p)[0] for p in test_images]
    return {"images": images, "sha256": bundle.metadata.index_sha256,
            "scores": [s.image_score for s in bundle.detector.score_batch(images)]}


def crash_once(target: str, delay_ms: int, args: list[str], out: Path, reference: dict) -> CrashPoint:
    from service.indexes import discover

    probes, killed = kill_at(target, delay_ms, args)
    landed, stage = stage_of(probes)
    left = leftovers(out)
    old_ok = check_index(out, reference)
    sees = sorted(discover(out.parent))
    ok = rebuild(args)
    return CrashPoint(target, delay_ms, landed, stage, killed, left, old_ok, sees, ok, leftovers(out),
                      check_index(out, reference))


def draw_points(n: int, seed: int) -> list[tuple[str, int]]:
    """n points: the cover list first (every stage, every save step), then random probes, counts and modes.

    ``pass`` points run on for a random delay before the kill: up to 400 ms while the backbone loads (about half a
    second), up to 30 ms elsewhere (the demo's other stages take 10-200 ms), so they land inside or just past it."""
    rng = random.Random(seed)

    def delay(name: str, mode: str) -> int:
        return 0 if mode != "pass" else rng.randint(0, 400 if name == "load_model" else 30)

    points = [(f"{name}:{count}:{mode}", delay(name, mode)) for name, count, mode in COVER[:n]]
    names = sorted({*STAGE, "embed"})
    while len(points) < n:
        name, mode = rng.choice(names), rng.choice(["at", "after", "pass"])
        points.append((f"{name}:{rng.randint(1, COUNTS.get(name, 1))}:{mode}", delay(name, mode)))
    return points


def prepare(workdir: Path) -> tuple[list[str], Path, dict]:
    from demo.sample import write_sample

    sample = write_sample(workdir / "sample", n_train=12, n_test_good=2, n_test_defect=2, size=128)
    out = workdir / "indexes" / "disc"
    args = build_args(sample, out)
    if not rebuild(args):
        raise RuntimeError("the first build failed")
    return args, out, reference_of(out, sorted((sample / "test").glob("*/*.png")))


def print_table(points: list[CrashPoint], extra: list[dict]) -> None:
    print("| # | kill point | landed in | stage | left behind | old index loads, same scores | server sees "
          "| next build | same scores after |\n|---:|---|---|---|---|---|---|---|---|")
    for i, p in enumerate(points, 1):
        target = p.target + (f" +{p.delay_ms} ms" if p.target.endswith("pass") else "")
        print(f"| {i} | {target} | {p.landed} | {p.stage} | {', '.join(p.leftovers) or '-'} | "
              f"{'yes' if p.old_loads_identical else 'NO'} | {', '.join(p.server_sees)} | "
              f"{'ok, clean' if p.rebuild_ok and not p.rebuild_leftovers else 'FAILED'} | "
              f"{'yes' if p.rebuild_identical else 'NO'} |")
    killed = [p for p in points if p.killed]
    stages = sorted({p.stage for p in killed})
    print(f"\n{sum(p.survived for p in killed)}/{len(killed)} kills survived ({len(points) - len(killed)} builds "
          f"finished before the kill); stages hit: {', '.join(stages)}")
    print("\n| scenario | outcome | old index intact | left behind | message |\n|---|---|---|---|---|")
    for e in extra:
        print(f"| {e['scenario']} | {e['outcome']} | {e.get('old_intact', '-')} | {e.get('leftovers', '-')} | "
              f"{e.get('message', '')[:160]} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--points", type=int, default=20)
    p.add_argument("--seed", type=int, default=15)
    p.add_argument("--workdir", type=Path)
    p.add_argument("--save", action="store_true", help="write reliability/results/crash_build.json")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="patchcore-crash-") as tmp:
        workdir = args.workdir or Path(tmp)
        build, out, reference = prepare(workdir)
        points = [crash_once(t, d, build, out, reference) for t, d in draw_points(args.points, args.seed)]
        extra = [scenario(workdir, build, out, reference)
                 for scenario in (disk_full, read_only, concurrent_builders, builders_at_once)]
    print_table(points, extra)
    killed = [pt for pt in points if pt.killed]
    ok = all(pt.survived for pt in killed) and all(e["ok"] for e in extra if e["ok"] is not None)
    if args.save:
        record = {"seed": args.seed, "points": [{**asdict(pt), "survived": pt.survived} for pt in points],
                  "scenarios": extra}
        print(f"\nwrote {save_result('crash_build', record)}")
    print(json.dumps({"kills": len(killed), "survived": sum(pt.survived for pt in killed), "ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
