"""Every API error shows as a readable message in the page, never as a broken page: the real server's 422, 413, 401
and 503, then 503 for good, 500, 502 and a cut connection through Playwright's network interception, and the
page's error mapping itself (static/errors.js) called directly in the browser."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from playwright.sync_api import expect

from service.app import create_app
from tests.live import live_server
from tests.page.inspection import Inspection, payload, png
from tests.service.conftest import make_settings

pytestmark = pytest.mark.browser
KEY = "s3cret-key"


def _error_card(inspection: Inspection, n: int):
    card = inspection.card(n)
    expect(card).to_have_class("card error")
    return card


def test_a_text_file_shows_the_422_message(inspection, disc_files):
    inspection.send(payload("notes.txt", b"these are my notes, not a picture", "text/plain"))
    inspection.wait_rows(1)
    card = _error_card(inspection, 1)
    expect(card.locator(".name")).to_have_text("notes.txt")
    expect(card.locator(".error-title")).to_have_text("Not a picture the server can read (HTTP 422)")
    detail = card.locator(".error-detail").inner_text()
    assert "'notes.txt' is text, not a supported image" in detail and "send PNG, JPEG, BMP or TIFF" in detail
    assert "0x" not in detail and "_io." not in detail  # no Python object reprs
    expect(inspection.page.locator("#results tbody tr td.error-text")).to_contain_text("HTTP 422")
    inspection.send(payload("good.png", disc_files["good/000.png"]))  # the page still works
    inspection.wait_rows(2)
    assert inspection.decisions() == ["error", "normal"]


def test_a_bad_file_does_not_sink_the_others_sent_with_it(inspection, disc_files):
    inspection.send(payload("good.png", disc_files["good/000.png"]), payload("empty.png", b""),
                    payload("spot.png", disc_files["spot/000.png"]))
    inspection.wait_rows(3)
    assert inspection.decisions() == ["normal", "error", "anomalous"]
    expect(_error_card(inspection, 2).locator(".error-detail")).to_contain_text("is empty (0 bytes)")


def test_filenames_are_shown_as_text_never_run(inspection):
    name = '<img src=x onerror="window.pwned=1">.txt'
    inspection.send(payload(name, b"text", "text/plain"))
    inspection.wait_rows(1)
    expect(_error_card(inspection, 1).locator(".name")).to_have_text(name)
    assert inspection.page.evaluate("() => window.pwned === undefined && !document.querySelector('img[src=x]')")


def test_a_picture_over_the_pixel_cap_shows_the_servers_413(inspection):
    bomb = png(Image.new("L", (2100, 2100)))  # 4.4 megapixels in a few kB; this server takes 4
    assert len(bomb) < 100_000
    inspection.send(payload("huge.png", bomb))
    inspection.wait_rows(1)
    card = _error_card(inspection, 1)
    expect(card.locator(".error-title")).to_have_text("Too large for the server (HTTP 413)")
    expect(card.locator(".error-detail")).to_contain_text("2100x2100 = 4410000, over the limit of 4000000")
    expect(card.locator(".error-hint")).to_contain_text("4.0 megapixels")


def test_a_file_over_the_upload_limit_is_refused_without_sending_it(inspection):
    posts = []
    inspection.page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    inspection.send(payload("big.png", b"\0" * (1024 * 1024 + 1)))
    inspection.wait_rows(1)
    card = _error_card(inspection, 1)
    expect(card.locator(".error-title")).to_have_text("Too large for the server (HTTP 413)")
    expect(card.locator(".error-detail")).to_contain_text("over this server's limit of 1048576 bytes")
    expect(card.locator(".error-hint")).to_contain_text("files up to 1.0 MiB")
    assert posts == []


@pytest.fixture(scope="module")
def key_server(page_index):
    with live_server(create_app(make_settings(page_index, api_key=KEY))) as url:
        yield url


def test_a_server_with_an_api_key(page, key_server, disc_files, tmp_path):
    view = Inspection(page, key_server)
    view.open(products=False)
    message = page.locator("#messages .message")
    expect(message.locator(".message-title")).to_have_text("API key needed (HTTP 401)")
    expect(message.locator(".message-detail")).to_contain_text("missing API key")
    expect(page.locator("#api-key")).to_be_focused()
    expect(page.locator("#product")).to_be_disabled()
    view.send(payload("good.png", disc_files["good/000.png"]))  # no product yet: said so, nothing sent
    expect(page.locator("#messages")).to_contain_text("Choose a product first")

    page.fill("#api-key", "not-the-key")
    page.click("#key-form button")
    expect(message.first.locator(".message-title")).to_have_text("Wrong API key (HTTP 401)")
    page.fill("#api-key", KEY)
    page.press("#api-key", "Enter")
    expect(page.locator("#product")).to_be_enabled()
    expect(page.locator("#messages .message")).to_have_count(1)  # only "choose a product first" is left
    page.click("#messages .dismiss")
    expect(page.locator("#messages .message")).to_have_count(0)
    view.send(payload("good.png", disc_files["good/000.png"]))
    view.wait_rows(1)
    assert view.decisions() == ["normal"]

    page.reload()  # the key is kept for this tab (sessionStorage)
    expect(page.locator("#product")).to_be_enabled()
    expect(page.locator("#messages .message")).to_have_count(0)
    view.finish(tmp_path / "page.png")


@pytest.fixture(scope="module")
def pausable_server(page_index):
    """A real server whose readiness the test switches off and on (what it answers while loading or stopping)."""
    app = create_app(make_settings(page_index))
    with live_server(app) as url:
        yield url, app.state.registry


def test_the_real_servers_503_is_waited_out(page, pausable_server, disc_files, tmp_path):
    """Not ready: the server answers 503 with Retry-After: 5. The page says it waits, asks again, and gets there."""
    url, registry = pausable_server
    view = Inspection(page, url)
    registry.ready = False
    try:
        view.open(products=False)
        expect(page.locator("#status")).to_contain_text("still starting; asking again in 5 s", timeout=10_000)
    finally:
        registry.ready = True
    expect(page.locator("#product")).to_be_enabled(timeout=15_000)
    registry.ready = False
    try:
        view.send(payload("good.png", disc_files["good/000.png"]))
        expect(page.locator("#status")).to_contain_text("busy; sending again in 5 s", timeout=10_000)
    finally:
        registry.ready = True
    view.wait_rows(1)
    assert view.decisions() == ["normal"]
    expect(page.locator("#messages .message")).to_have_count(0)
    view.finish(tmp_path / "page.png")


MOCKED = {
    "busy": (503, {"Retry-After": "0"}, {"detail": "the inference queue is full (64 waiting); retry shortly"},
             "The server is busy or still starting (HTTP 503)", "inference queue is full"),
    "key revoked": (401, {}, {"detail": "wrong API key (header X-API-Key)"}, "Wrong API key (HTTP 401)",
                    "wrong API key"),
    "server fault": (500, {}, {"detail": "internal error; see the server log"}, "Server error (HTTP 500)",
                     "internal error"),
    "proxy page": (502, {"content-type": "text/html"}, "<html><body><h1>502 Bad Gateway</h1></body></html>",
                   "Server error (HTTP 502)", "HTTP 502"),
    "validation list": (422, {}, {"detail": [{"loc": ["body", "files"], "msg": "Field required", "type": "missing"}]},
                        "Not a picture the server can read (HTTP 422)", "files: Field required"),
}


@pytest.mark.parametrize("case", MOCKED)
def test_every_error_answer_reads_as_a_message(inspection, disc_files, case):
    """The answer of /predict/batch is replaced in the browser; the page must explain it, and retry a 503."""
    status, headers, body, title, detail = MOCKED[case]
    calls = []

    def answer(route):
        calls.append(route.request.url)
        text = body if isinstance(body, str) else json.dumps(body)
        route.fulfill(status=status, headers={"content-type": "application/json", **headers}, body=text)

    inspection.page.route("**/predict/batch*", answer)
    inspection.send(payload("good.png", disc_files["good/000.png"]))
    inspection.wait_rows(1)
    card = _error_card(inspection, 1)
    expect(card.locator(".error-title")).to_have_text(title)
    expect(card.locator(".error-detail")).to_contain_text(detail)
    assert len(calls) == (3 if status == 503 else 1)  # a 503 is sent again (Retry-After), twice
    if status != 422:  # not about the file: also said at the top of the page
        expect(inspection.page.locator("#messages .message-title")).to_have_text(title)
    if status == 401:
        expect(inspection.page.locator("#key-form")).to_be_visible()


def test_a_cut_connection_reads_as_a_message(inspection, disc_files):
    inspection.page.route("**/predict/batch*", lambda route: route.abort("connectionreset"))
    inspection.send(payload("good.png", disc_files["good/000.png"]))
    inspection.wait_rows(1)
    expect(_error_card(inspection, 1).locator(".error-title")).to_have_text("The server could not be reached")
    expect(inspection.page.locator("#messages .message-hint")).to_contain_text("Check that the server is running")


def test_a_starting_server_is_asked_again(page, page_server):
    """/indexes answers 503 (not ready) twice, then the real server: the product list arrives, no message stays."""
    calls = []

    def not_ready_twice(route):
        calls.append(1)
        if len(calls) <= 2:
            route.fulfill(status=503, headers={"Retry-After": "0", "content-type": "application/json"},
                          body='{"detail": "the server is still loading its indexes; retry in a few seconds"}')
        else:
            route.continue_()

    page.route("**/indexes", not_ready_twice)
    view = Inspection(page, page_server)
    view.open()
    assert len(calls) == 3
    expect(page.locator("#messages .message")).to_have_count(0)
    assert not view.errors


ERROR_CASES = """async () => {
    const { ApiError, describeError, retryAfterSeconds, detailOf } = await import("/static/errors.js");
    const limits = { max_upload_bytes: 20 * 1048576, max_pixels: 40e6, max_batch_files: 16, api_key_required: true };
    const d = (status, detail, retry = null) => describeError(new ApiError(status, detail, retry), limits);
    return {
        network: d(0, "no answer from the server (Failed to fetch)"),
        notJson: d(-1, "/indexes answered HTTP 200 without JSON"),
        ambiguous: d(400, "this server holds 2 indexes (a, b); choose one with ?index=NAME"),
        missingKey: d(401, "missing API key: send it in the X-API-Key header"),
        wrongKey: d(401, "wrong API key (header X-API-Key)"),
        unknown: d(404, "unknown index 'x'; this server holds: disc"),
        tooLarge: d(413, "request body of 99999999 bytes is over the limit"),
        notImage: d(422, "'a.txt' is not a supported image"),
        busy: d(503, "the inference queue is full", 1),
        notReady: d(503, "the server is still loading its indexes", null),
        fault: d(500, "internal error; see the server log"),
        teapot: d(418, "I'm a teapot"),
        pageBug: describeError(new TypeError("x is undefined")),
        listDetail: detailOf({ detail: [{ loc: ["query", "index"], msg: "bad" }, { loc: ["body"], msg: "worse" }] }, "f"),
        htmlBody: detailOf(null, "HTTP 502 Bad Gateway"),
        retryDate: retryAfterSeconds(new Date(Date.now() + 30000).toUTCString()),
        retrySeconds: retryAfterSeconds("7"),
        retryJunk: retryAfterSeconds("soon"),
    };
}"""


def test_the_error_mapping_of_the_page(inspection):
    got = inspection.page.evaluate(ERROR_CASES)
    titles = {k: v["title"] for k, v in got.items() if isinstance(v, dict)}
    assert titles == {
        "network": "The server could not be reached", "notJson": "Unexpected answer from the server",
        "ambiguous": "Choose a product", "missingKey": "API key needed", "wrongKey": "Wrong API key",
        "unknown": "Not found", "tooLarge": "Too large for the server", "notImage": "Not a picture the server can read",
        "busy": "The server is busy or still starting", "notReady": "The server is busy or still starting",
        "fault": "Server error", "teapot": "Request refused",
        "pageBug": "The page hit an unexpected error",
    }
    for key, value in got.items():
        if isinstance(value, dict) and key not in ("notImage", "teapot"):
            assert value["hint"], f"{key} has no hint"  # every status says what to do next
    assert "retry in 1 s" in got["busy"]["hint"] and "few seconds" in got["notReady"]["hint"]
    assert "20.0 MiB" in got["tooLarge"]["hint"] and "40.0 megapixels" in got["tooLarge"]["hint"]
    assert "API key" in got["missingKey"]["hint"] and "server log" in got["fault"]["hint"]
    assert got["pageBug"]["detail"] == "x is undefined" and got["notImage"]["detail"] == "'a.txt' is not a supported image"
    assert got["listDetail"] == "index: bad; worse" and got["htmlBody"] == "HTTP 502 Bad Gateway"
    assert 28 <= got["retryDate"] <= 31 and got["retrySeconds"] == 7 and got["retryJunk"] is None
