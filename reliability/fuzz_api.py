"""Fuzz the real server from its own OpenAPI schema with schemathesis (`st run --checks all`), and count the answers.

Builds two small demo indexes (synthetic sample, seconds), starts patchcore-serve on 127.0.0.1 with them, and runs
schemathesis on /openapi.json: every operation, generated multipart bodies, query parameters and headers, in the
coverage and fuzzing phases. reliability/st_hooks.py puts real pictures into the files and real index names into
?index=, so the cases reach predictions. It runs once without an API key and once with one (then schemathesis
also checks that requests without the key are refused). Prints a table and writes reliability/results/fuzz_api.json.

    python -m reliability.fuzz_api                       # the full run: >= 1,000 cases (250 per operation)
    python -m reliability.fuzz_api --max-examples 15     # about 250 cases: the CI profile (test_fuzz_api.py)

Exit code 0 when schemathesis found nothing and no answer was a 5xx.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from reliability.common import REPO, demo_indexes, demo_server, save_result, server_errors

API_KEY = "fuzz-key-0123456789"  # a test key for a loopback server that lives for one run


@dataclass
class FuzzRun:
    label: str
    st_exit_code: int
    cases: int
    statuses: dict[str, dict[str, int]]  # "POST /predict" -> {"200": n, "422": n, ...}
    server_errors: list[str]
    summary: str  # schemathesis's own summary lines
    seconds: float
    five_xx: int = field(init=False)

    def __post_init__(self) -> None:
        self.five_xx = sum(n for by in self.statuses.values() for s, n in by.items() if s.startswith("5"))

    @property
    def ok(self) -> bool:
        return self.st_exit_code == 0 and self.five_xx == 0 and not self.server_errors


def write_pictures(samples: Path, out: Path) -> Path:
    """The pictures the hooks draw from: the demo test images as PNG, JPEG, BMP, TIFF, 16-bit, at several sizes."""
    out.mkdir(parents=True, exist_ok=True)
    sources = sorted(samples.glob("*/test/*/*.png"))
    for i, path in enumerate(sources):
        img = Image.open(path).convert("RGB")
        variants = {
            "png": (img, "PNG", {}), "jpg": (img, "JPEG", {"quality": 90}), "bmp": (img, "BMP", {}),
            "tif": (img.resize((img.width * 2, img.height + 40)), "TIFF", {}),
            "small.png": (img.resize((24, 16)), "PNG", {}),
            "g16.png": (Image.fromarray(np.asarray(img.convert("L"), np.uint16) * 257), "PNG", {}),
        }
        for suffix, (picture, fmt, options) in variants.items():
            buf = io.BytesIO()
            picture.save(buf, format=fmt, **options)
            (out / f"{i:02d}.{suffix}").write_bytes(buf.getvalue())
    return out


def run_schemathesis(url: str, workdir: Path, label: str, max_examples: int, seed: int, names: list[str],
                     api_key: str | None) -> tuple[int, str, Path]:
    log = workdir / f"responses-{label}.txt"
    log.unlink(missing_ok=True)
    env = dict(os.environ, SCHEMATHESIS_HOOKS="reliability.st_hooks", PYTHONPATH=str(REPO),
               PATCHCORE_FUZZ_IMAGES=str(workdir / "pictures"), PATCHCORE_FUZZ_INDEXES=",".join(names),
               PATCHCORE_FUZZ_LOG=str(log))
    cmd = [str(Path(sys.executable).with_name("st")), "--config-file", str(REPO / "reliability" / "schemathesis.toml"),
           "run", f"{url}/openapi.json", "--checks", "all",
           "--max-examples", str(max_examples), "--seed", str(seed), "--workers", "1", "--no-color",
           "--generation-database", "none", "--phases", "examples,coverage,fuzzing", "--request-timeout", "60",
           "--max-failures", "20"]
    if api_key:
        cmd += ["--header", f"X-API-Key: {api_key}"]
    done = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=3600)
    (workdir / f"st-{label}.txt").write_text(done.stdout + done.stderr)
    return done.returncode, done.stdout + done.stderr, log


def count_statuses(log: Path) -> tuple[int, dict[str, dict[str, int]]]:
    by: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    lines = log.read_text().splitlines() if log.exists() else []
    for line in lines:
        method, path, status = line.split()
        by[f"{method} {path}"][status] += 1
    return len(lines), {op: dict(sorted(c.items())) for op, c in sorted(by.items())}


def summary_lines(output: str) -> str:
    keep = [ln.strip() for ln in output.splitlines()
            if any(w in ln for w in ("generated", "passed", "failed", "ST1", "ST2", "ST3", "ST4", "Seed:", "Warning"))]
    return "\n".join(keep[-20:])


def fuzz(workdir: Path, indexes: Path, samples: Path, max_examples: int, seed: int, with_key: bool) -> FuzzRun:
    """One schemathesis run against a fresh server on the indexes; pictures come from the samples' test images."""
    write_pictures(samples, workdir / "pictures")
    label = "key" if with_key else "open"
    names = sorted(p.name for p in indexes.iterdir() if p.is_dir() and not p.name.startswith("."))
    settings = dict(threads=1, max_batch_files=4, max_upload_bytes=2 * 1024 * 1024, log_level="INFO")
    if with_key:
        settings["api_key"] = API_KEY
    t0 = time.perf_counter()
    with demo_server(indexes, workdir / f"server-{label}.log", **settings) as server:
        code, output, log = run_schemathesis(server.url, workdir, label, max_examples, seed, names,
                                             API_KEY if with_key else None)
    cases, statuses = count_statuses(log)
    return FuzzRun(label, code, cases, statuses, server_errors(server.log), summary_lines(output),
                   round(time.perf_counter() - t0, 1))


def print_table(runs: list[FuzzRun]) -> None:
    print("| run | cases | 5xx | schemathesis exit | server errors logged |\n|---|---:|---:|---:|---:|")
    for r in runs:
        print(f"| {r.label} | {r.cases:,} | {r.five_xx} | {r.st_exit_code} | {len(r.server_errors)} |")
    print("\n| run | operation | answers |\n|---|---|---|")
    for r in runs:
        for op, by in r.statuses.items():
            print(f"| {r.label} | {op} | {', '.join(f'{s}: {n}' for s, n in by.items())} |")
    for r in runs:
        print(f"\n[{r.label}] schemathesis summary:\n{r.summary}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-examples", type=int, default=250, help="schemathesis fuzzing cases per operation")
    p.add_argument("--seed", type=int, default=15)
    p.add_argument("--workdir", type=Path, help="indexes, pictures and logs (default: a temporary folder)")
    p.add_argument("--no-key-run", action="store_true", help="skip the run with an API key")
    p.add_argument("--save", action="store_true", help="write reliability/results/fuzz_api.json")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="patchcore-fuzz-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        indexes = demo_indexes(workdir)
        runs = [fuzz(workdir, indexes, workdir / "samples", args.max_examples, args.seed, with_key=False)]
        if not args.no_key_run:
            runs.append(fuzz(workdir, indexes, workdir / "samples", args.max_examples, args.seed, with_key=True))
    print_table(runs)
    if args.save:
        record = {"max_examples": args.max_examples, "seed": args.seed,
                  "runs": [{**asdict(r), "five_xx": r.five_xx} for r in runs]}
        print(f"\nwrote {save_result('fuzz_api', record)}")
    total = sum(r.cases for r in runs)
    print(f"\n{total:,} cases, {sum(r.five_xx for r in runs)} answered 5xx; "
          f"{'PASS' if all(r.ok for r in runs) else 'FAIL'}")
    print(json.dumps({"cases": total, "five_xx": sum(r.five_xx for r in runs), "ok": all(r.ok for r in runs)}))
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
