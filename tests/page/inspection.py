"""A page object for the inspection page: what a user does (send files, move sliders) and what they see."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from PIL import Image
from playwright.sync_api import Page, expect

ROWS = "#results tbody tr"


def payload(name: str, data: bytes, mime: str = "image/png") -> dict:
    """A file for set_input_files, as a user's browser would hand it to the page."""
    return {"name": name, "mimeType": mime, "buffer": data}


def sample_files(sample_dir: Path) -> dict[str, bytes]:
    """'good/000.png' -> bytes, for the synthetic sample's test pictures."""
    return {f"{p.parent.name}/{p.name}": p.read_bytes() for p in sorted((sample_dir / "test").glob("*/*.png"))}


def png(image: Image.Image, fmt: str = "PNG", **save) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save)
    return buf.getvalue()


class Inspection:
    def __init__(self, page: Page, url: str) -> None:
        self.page, self.url = page, url
        self.errors: list[str] = []  # uncaught exceptions in the page
        self.requests: list[str] = []  # every URL the page asked for
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("request", lambda req: self.requests.append(req.url))

    def open(self, products: bool = True) -> None:
        self.page.goto(self.url)
        if products:
            expect(self.page.locator("#product")).to_be_enabled()
            expect(self.page.locator("#product option")).not_to_have_count(0)

    def finish(self, screenshot: Path) -> None:
        self.page.screenshot(path=str(screenshot), full_page=True)
        assert not self.errors, f"uncaught errors in the page: {self.errors}"

    # -- doing
    def send(self, *files: dict) -> None:
        """Choose files with the page's file input (what the 'Choose pictures…' button opens)."""
        self.page.set_input_files("#files", list(files))

    def drop(self, *files: dict) -> None:
        self._dispatch("drop", files)

    def paste(self, *files: dict) -> None:
        self._dispatch("paste", files)

    def _dispatch(self, kind: str, files) -> None:
        """A real DataTransfer holding File objects, dropped on the drop zone or pasted into the document."""
        self.page.evaluate(
            """([kind, files]) => {
                const dt = new DataTransfer();
                for (const [name, type, b64] of files) {
                    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                    dt.items.add(new File([bytes], name, { type }));
                }
                const init = { bubbles: true, cancelable: true };
                if (kind === "drop") {
                    document.querySelector("#drop").dispatchEvent(new DragEvent("drop", { ...init, dataTransfer: dt }));
                } else {
                    document.dispatchEvent(new ClipboardEvent("paste", { ...init, clipboardData: dt }));
                }
            }""",
            [kind, [[f["name"], f["mimeType"], base64.b64encode(f["buffer"]).decode()] for f in files]],
        )

    def set_what_if(self, value: float) -> None:
        self.page.locator("#whatif").evaluate(
            "(el, v) => { el.value = v; el.dispatchEvent(new Event('input', { bubbles: true })); }", value
        )

    # -- seeing
    def wait_rows(self, n: int) -> None:
        expect(self.page.locator(ROWS)).to_have_count(n, timeout=60_000)
        expect(self.page.locator("#status")).to_contain_text("scored in", timeout=60_000)

    def card(self, n: int):
        return self.page.locator(f"#card-{n}")

    def decision(self, n: int) -> str:
        return self.card(n).locator(".decision").inner_text()

    def decisions(self) -> list[str]:
        """The decision of each table row, in order: 'anomalous', 'normal' or 'error'."""
        return self.page.locator(ROWS).evaluate_all("rows => rows.map((r) => r.dataset.decision)")

    def expect_decisions(self, expected: list[str]) -> None:
        """Waits (5 s at most) until the table shows these decisions: the page redraws on the next animation frame."""
        try:
            self.page.wait_for_function(
                """(want) => [...document.querySelectorAll("#results tbody tr")].map((r) => r.dataset.decision)
                                .join() === want""", arg=",".join(expected), timeout=5_000)
        except Exception:
            assert self.decisions() == expected  # says what differs
            raise

    def heat_ready(self, n: int) -> None:
        """Waits until the card's overlay canvas has been painted from the server's map."""
        self.page.wait_for_function(
            """(n) => {
                const c = document.querySelector(`#card-${n} canvas.heat`);
                if (!c) return false;
                const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
                for (let i = 3; i < d.length; i += 4 * 97) if (d[i] > 0) return true;
                return false;
            }""",
            arg=n, timeout=30_000,
        )

    def heat_pixel(self, n: int, x: int, y: int) -> list[int]:
        return self.page.evaluate(
            """([n, x, y]) => Array.from(document.querySelector(`#card-${n} canvas.heat`)
                   .getContext("2d").getImageData(x, y, 1, 1).data)""",
            [n, x, y],
        )

    def heat_warmth(self, n: int) -> int:
        """Sum of red and green over the card's overlay: it grows as the map turns from blue towards red."""
        return self.page.evaluate(WARMTH, n)


WARMTH = """(n) => {
    const c = document.querySelector(`#card-${n} canvas.heat`);
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let sum = 0;
    for (let i = 0; i < d.length; i += 4) sum += d[i] + d[i + 1];
    return sum;
}"""
