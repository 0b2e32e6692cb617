"""Screenshot of the inspection page scoring real pictures (docs/figures/inspection_page.png).

Starts the real server (python -m service.cli) on an index folder, opens the page in headless chromium (Debian's
package, through Playwright's executable_path), sends the pictures, waits until every overlay is drawn, and writes
a palette PNG (256 colours: a fraction of the size of the raw screenshot).

    .venv/bin/python scripts/page_screenshot.py --index-dir indexes/bottle \\
        --images ../shared/data/mvtec_ad/bottle/test/{broken_large,broken_small,contamination,good}/000.png \\
        --out docs/figures/inspection_page.png
"""

from __future__ import annotations

import argparse
import io
import mimetypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from PIL import Image
from playwright.sync_api import expect, sync_playwright

REPO = Path(__file__).resolve().parents[1]
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(index_dir: Path, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PATCHCORE_")}
    return subprocess.Popen([sys.executable, "-m", "service.cli", "--index-dir", str(index_dir), "--port", str(port)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait_ready(proc: subprocess.Popen, url: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server stopped: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server was not ready after {timeout_s:.0f} s")


def _upload(path: Path) -> dict:
    """The picture as the page's file input gets it, named after its folder too (MVTec names them all 000.png)."""
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return {"name": f"{path.parent.name}_{path.name}", "mimeType": mime, "buffer": path.read_bytes()}


def shoot(url: str, images: list[Path], out: Path, chromium: str, width: int, height: int) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=FLAGS)
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(url)
        expect(page.locator("#product")).to_be_enabled(timeout=60_000)
        page.set_input_files("#files", [_upload(path) for path in images])
        expect(page.locator("#results tbody tr")).to_have_count(len(images), timeout=300_000)
        page.wait_for_function("""(n) => [...document.querySelectorAll("canvas.heat")].filter((c) => {
            const d = c.getContext("2d").getImageData(c.width >> 1, c.height >> 1, 1, 1).data;
            return d[3] > 0;
        }).length === n && [...document.querySelectorAll("img.photo")].every((i) => i.complete && i.naturalWidth)""",
                               arg=len(images), timeout=60_000)
        png = page.screenshot(full_page=True)
        browser.close()
    image = Image.open(io.BytesIO(png)).convert("RGB")
    out.parent.mkdir(parents=True, exist_ok=True)
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out, optimize=True)
    print(f"{out}: {image.width} x {image.height}, {out.stat().st_size / 1024:.0f} KiB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index-dir", type=Path, required=True, help="index folder given to patchcore-serve")
    parser.add_argument("--images", type=Path, nargs="+", required=True, help="pictures to send, in order")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "figures" / "inspection_page.png")
    parser.add_argument("--chromium", default=os.environ.get("CHROMIUM") or shutil.which("chromium"),
                        help="chromium executable (default: $CHROMIUM, else chromium on PATH)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=800)
    args = parser.parse_args(argv)
    if not args.chromium:
        parser.error("chromium not found: apt-get install -y chromium, or pass --chromium PATH")
    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:
        parser.error(f"no such picture: {', '.join(missing)}")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve(args.index_dir, port)
    try:
        _wait_ready(proc, url)
        shoot(url, args.images, args.out, args.chromium, args.width, args.height)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
