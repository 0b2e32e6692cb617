"""The page's server side: GET /, its static files, and the fields it reads (GET /limits, score_std in /indexes)."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import zipfile

import pytest
from fastapi.testclient import TestClient

from index_store import store
from service.app import create_app
from service.page import STATIC_DIR
from tests.service.conftest import make_settings

REPO = STATIC_DIR.parents[1]
STATIC_FILES = sorted(p.name for p in STATIC_DIR.iterdir() if p.is_file())
TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}


def test_root_serves_the_page_with_its_security_headers(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "<title>PatchCore inspection</title>" in r.text
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "script-src 'self'" in csp
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["cache-control"] == "no-cache"
    head = client.head("/")
    assert head.status_code == 200 and head.content == b""
    assert "/" not in client.get("/openapi.json").json()["paths"]  # the page is not part of the API


@pytest.mark.parametrize("name", STATIC_FILES)
def test_every_static_file_is_served_with_its_type_and_headers(client, name):
    r = client.get(f"/static/{name}")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(TYPES[STATIC_DIR.joinpath(name).suffix])  # module scripts need it
    assert r.headers["content-security-policy"].startswith("default-src 'none'")
    assert r.content == (STATIC_DIR / name).read_bytes()


def test_the_page_references_only_files_it_has_and_nothing_outside():
    """Every src/href and every module import resolves to a file in service/static/; no URL leaves the server."""
    referenced = set()
    for name in STATIC_FILES:
        text = (STATIC_DIR / name).read_text(encoding="utf-8")
        assert not re.search(r"https?://|//cdn|@import|url\(", text), f"{name} refers to something outside the server"
        referenced |= set(re.findall(r'(?:src|href)="/static/([^"]+)"', text))
        referenced |= set(re.findall(r'from "\./([^"]+)"', text))
    assert referenced and referenced <= set(STATIC_FILES), referenced - set(STATIC_FILES)
    unused = set(STATIC_FILES) - referenced - {"index.html"}
    assert not unused, f"static files nothing loads: {unused}"


def test_static_paths_cannot_escape_the_folder(client):
    for path in ("/static/../page.py", "/static/%2e%2e/page.py", "/static/..%2fapp.py"):
        r = client.get(path)
        assert r.status_code == 404 and "import" not in r.text, path
    assert client.get("/static/nothing.js").status_code == 404


def test_limits_are_public_and_say_whether_a_key_is_needed(disc_dir):
    with TestClient(create_app(make_settings(disc_dir, api_key="s3cret"))) as c:
        assert c.get("/indexes").status_code == 401
        assert c.get("/").status_code == 200 and c.get("/static/app.js").status_code == 200  # the page needs no key
        r = c.get("/limits")
        assert r.status_code == 200
        assert r.json() == {"max_upload_bytes": 1024 * 1024, "max_batch_files": 4, "max_pixels": 4_000_000,
                            "api_key_required": True}
    with TestClient(create_app(make_settings(disc_dir, max_batch_files=7))) as c:
        body = c.get("/limits").json()
        assert body["api_key_required"] is False and body["max_batch_files"] == 7


def test_score_std_reproduces_the_normalised_score(client, disc_dir, test_images):
    """The page re-normalises against a what-if threshold with sigmoid((s - t) / score_std): check it with t = the
    server's threshold against the server's own normalised scores."""
    (info,) = client.get("/indexes").json()
    assert info["score_std"] == pytest.approx(store.read_metadata(disc_dir).calibration.std)
    for name, data in test_images.items():
        body = client.post("/predict", files={"file": (name, data)}).json()
        mine = 1 / (1 + math.exp(-(body["image_score"] - info["threshold"]) / info["score_std"]))
        assert mine == pytest.approx(body["normalised_score"], rel=1e-5, abs=1e-9), name  # float32 scores
        assert body["threshold"] == pytest.approx(info["threshold"])


def test_static_page_requests_are_counted_under_one_label(client):
    client.get("/static/app.js")
    client.get("/static/does-not-exist-1.js")
    client.get("/static/does-not-exist-2.js")
    text = client.get("/metrics").text
    assert 'route="/static"' in text and "does-not-exist" not in text


def test_the_wheel_carries_the_page(tmp_path):
    """A non-editable install (the Docker image) gets service/static/ through package-data."""
    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools in this environment")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", str(REPO), "-w", str(tmp_path)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"service/static/{name}" for name in STATIC_FILES} <= names
