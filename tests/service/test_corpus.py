"""Every entry of the malformed-image corpus (tests/service/corpus.py) against a real uvicorn server over a socket.

Each gets its clear 4xx (with the words that say why, and never a Python repr) or 200 with the exact score of the
picture it holds; none gets a 5xx, and none hangs (a 120 s client timeout would fail the test).
"""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from service.app import create_app
from tests.service import corpus
from tests.service.conftest import make_settings
from tests.service.test_server import live_server

# Pillow warns about the damaged EXIF and TIFF tags these files are made of; the answers are what is tested.
pytestmark = pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning", "ignore:.*EXIF:UserWarning",
                                        "ignore:Tag data larger than file:UserWarning")
ENTRIES = corpus.build()
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def corpus_server(disc_dir):
    settings = make_settings(disc_dir, max_upload_bytes=4 * MIB, max_pixels=40_000_000, warmup=False)
    with live_server(create_app(settings)) as url, httpx.Client(base_url=url, timeout=120) as http:
        yield http


def _post(http: httpx.Client, entry: corpus.Entry) -> httpx.Response:
    return http.post("/predict", files={"file": (entry.filename, entry.data, corpus.content_type(entry))})


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_every_entry_gets_a_clear_4xx_or_the_right_answer(corpus_server, disc_bundle, entry):
    r = _post(corpus_server, entry)
    assert r.status_code == entry.status, (entry.name, r.status_code, r.text[:300])
    body = r.json()
    if entry.status != 200:
        detail = body["detail"]
        assert isinstance(detail, str) and entry.words in detail, detail
        assert "object at 0x" not in detail and "<class" not in detail, detail
        assert repr(entry.filename) in detail, detail  # it names the file
        return
    if entry.pixels is not None:  # the exact picture: the same score as scoring those pixels in-process
        want = disc_bundle.detector.score(entry.pixels)
        assert body["image_score"] == want.image_score, entry.name
        assert (body["image_height"], body["image_width"]) == entry.pixels.shape[:2]


def test_the_table_in_the_docs_matches_the_corpus():
    """docs/reliability.md lists every entry with the answer the test above demands."""
    from pathlib import Path

    lines = (Path(__file__).resolve().parents[2] / "docs" / "reliability.md").read_text().splitlines()
    for e in ENTRIES:
        rows = [line for line in lines if line.startswith(f"| {e.name} |")]
        assert len(rows) == 1 and f"| {e.status} |" in rows[0], (e.name, rows)


def test_a_batch_mixing_good_and_bad_files_names_the_bad_one(corpus_server):
    by_name = {e.name: e for e in ENTRIES}
    good, bad = by_name["wrong-extension"], by_name["size-1x1"]
    files = [("files", (e.filename, e.data, corpus.content_type(e))) for e in (good, bad)]
    r = corpus_server.post("/predict/batch", files=files)
    assert r.status_code == 422 and "'dot.png'" in r.json()["detail"] and "too small" in r.json()["detail"]


def test_the_corpus_script_writes_files_and_an_index(tmp_path):
    assert corpus.main(["--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "index.json").read_text())
    assert [r["name"] for r in rows] == [e.name for e in ENTRIES]
    assert len(list(tmp_path.glob("*__*"))) == len(ENTRIES)
    assert all(np.isfinite(r["bytes"]) for r in rows)
