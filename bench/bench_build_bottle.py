"""Stage times and peak RSS of `patchcore-build-index` on real bottle images, at the default 1 % and at 10 %.

Each build runs in its own process, so its peak RSS is its own. Prints a table and a JSON record, and the ratio
(coreset + index + calibration) / extraction that the builder is held to (target: <= 2 at 1 % and 10 %, issue 13).
Any product in MVTec AD form works: `--data ../shared/data/products/pill_qc`.

    python bench/bench_build_bottle.py [--data ../shared/data/mvtec_ad/bottle] [--ratios 0.01 0.1] [--extra ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "mvtec_ad" / "bottle"
STAGES = ("load_model", "extract", "coreset", "index", "calibration")


def build(data: Path, ratio: float, out: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "index_store.cli", "--data", str(data), "--out", str(out), "--coreset-ratio",
           str(ratio), "--json", "--no-progress", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"build failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.01, 0.1])
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="more patchcore-build-index arguments, e.g. --extra --coreset-mode bounded")
    args = parser.parse_args()
    if not (args.data / "train" / "good").is_dir():
        raise SystemExit(f"no MVTec category at {args.data}; pass --data")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for ratio in args.ratios:
            summary = build(args.data, ratio, Path(tmp) / f"r{ratio}", args.extra)
            stages = summary["stage_seconds"]
            post = stages["coreset"] + stages["index"] + stages["calibration"]
            rows.append({"coreset_ratio": ratio, "bank_size": summary["bank_size"], "images": summary["images"],
                         **{f"{s}_s": stages.get(s, 0.0) for s in STAGES},
                         "total_s": summary["build_seconds"], "peak_rss_mb": summary["peak_rss_mb"],
                         "post_over_extract": round(post / stages["extract"], 3)})
    header = ["ratio", "bank", *STAGES, "total", "peak RSS MB", "(coreset+index+calib)/extract"]
    print(" | ".join(header))
    for r in rows:
        cells = [f"{r['coreset_ratio']:.0%}", str(r["bank_size"]), *(f"{r[s + '_s']:.1f} s" for s in STAGES),
                 f"{r['total_s']:.1f} s", f"{r['peak_rss_mb']:.0f}", f"{r['post_over_extract']:.2f}"]
        print(" | ".join(cells))
    record = {"bench": "build_bottle", "data": str(args.data), "extra": args.extra, "rows": rows}
    print(json.dumps(record))
    if args.json_out:
        args.json_out.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
