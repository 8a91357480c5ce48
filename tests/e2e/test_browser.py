"""The pages a person opens, in a real headless Chromium against the local stack: ``/docs`` renders its
operations and "Authorize" takes the key; ``/demo`` shows the fast label, then the slow one, with no
console errors; pages of other origins may call the API or are blocked, as CORS says.

``TWOPASS_DEMO_SCREENSHOT=docs/demo.png`` keeps the demo's screenshot there (the one in the docs).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CAT_LABELS
from tests.e2e.browser import Page, chromium, chromium_path
from twopass.local.stack import LocalStack

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(chromium_path() is None and not os.environ.get("CI"), reason="chromium is not installed"),
]

REPO_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = os.environ.get("TWOPASS_DEMO_SCREENSHOT")
CAT = REPO_ROOT / "tests" / "data" / "chelsea.jpg"


@pytest.fixture
def page() -> Iterator[Page]:
    with chromium() as tab:
        yield tab


#: A page of another origin that calls the API with a key: GET /job/<unknown> (a 404 it must be able to read).
CROSS_ORIGIN_PAGE = b"""<!doctype html><title>waiting</title><script>
const [api, key] = decodeURIComponent(location.hash.slice(1)).split("|");
fetch(api + "/job/" + "0".repeat(32), {headers: {"x-api-key": key}})
  .then(async (r) => { document.title = "answered " + r.status + " " + (await r.json()).error; })
  .catch((e) => { document.title = "blocked " + e.name; });
</script>"""


@contextlib.contextmanager
def _page_server(host: str) -> Iterator[str]:
    """A static server on loopback ``host`` serving :data:`CROSS_ORIGIN_PAGE`; yields its origin."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(CROSS_ORIGIN_PAGE)))
            self.end_headers()
            self.wfile.write(CROSS_ORIGIN_PAGE)

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((host, 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _set_input(selector: str, value: str) -> str:
    """JavaScript that types ``value`` into a React-controlled input (its own setter, then an input event)."""
    return (
        f"(() => {{ const el = document.querySelector({json.dumps(selector)}); if (!el) return false;"
        " Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value').set"
        f".call(el, {json.dumps(value)}); el.dispatchEvent(new Event('input', {{bubbles: true}})); return true; }})()"
    )


def _click(selector: str) -> str:
    return (
        f"(() => {{ const el = document.querySelector({json.dumps(selector)}); if (el) el.click(); return !!el; }})()"
    )


def test_docs_render_the_operations_and_authorize_sends_the_key(stack: LocalStack, page: Page) -> None:
    page.goto(f"{stack.api_url}/docs")
    operations = page.wait_for("document.querySelectorAll('.opblock').length", timeout=60)
    paths = page.js("[...document.querySelectorAll('.opblock-summary-path')].map(e => e.textContent.trim())")
    assert operations >= 10 and {"/predict", "/job/{job_id}", "/jobs"} <= set(paths)
    assert "Unable to render" not in page.js("document.body.innerText")

    # Authorize: type the key into the x-api-key scheme, then run GET /jobs through "Try it out".
    assert page.wait_for(_click(".btn.authorize"))
    assert page.wait_for(_set_input(".modal-ux input[type=text], .modal-ux input[type=password]", stack.api_keys[0]))
    assert page.js(_click(".modal-ux .auth-btn-wrapper .authorize"))
    assert page.js(_click(".modal-ux .btn-done, .modal-ux .close-modal"))
    page.wait_for("!document.querySelector('.modal-ux')")
    opblock = "[id^='operations-'][id$='_jobs_get']"  # GET /jobs, whatever its tag
    assert page.js(_click(f"{opblock} .opblock-summary-control"))
    assert page.wait_for(_click(f"{opblock} .try-out__btn"))
    assert page.wait_for(_click(f"{opblock} .execute"))
    status = page.wait_for(
        f'document.querySelector("{opblock} .live-responses-table tbody .response-col_status")?.textContent',
        timeout=60,
    )
    assert status.strip().startswith("200"), status
    assert page.console_errors == []


def test_demo_shows_the_fast_label_then_the_slow_one(stack: LocalStack, page: Page, tmp_path: Path) -> None:
    page.goto(f"{stack.api_url}/demo#key={stack.api_keys[0]}")
    page.wait_for("document.documentElement.dataset.ready === 'true'")
    # Everything the page loads, from this app alone (no CDN), and small.
    loaded = page.js(
        "[...performance.getEntriesByType('navigation'), ...performance.getEntriesByType('resource')]"
        ".map(e => [e.name, e.encodedBodySize])"
    )
    assert all(url.startswith(stack.api_url) for url, _ in loaded), loaded
    weight_kb = sum(size for _, size in loaded) / 1024
    assert weight_kb < 64, loaded
    started = time.monotonic()
    page.set_files("#photo", [CAT])
    fast = page.wait_for("document.querySelector('#fast-label')?.textContent.trim()", timeout=30, every=0.01)
    fast_ms = (time.monotonic() - started) * 1000
    slow = page.wait_for("document.querySelector('#slow-label')?.textContent.trim()", timeout=60, every=0.02)
    slow_ms = (time.monotonic() - started) * 1000
    assert fast in CAT_LABELS and slow in CAT_LABELS, (fast, slow)
    timeline = page.js("[...document.querySelectorAll('#timeline li')].map(li => li.textContent)")
    assert any("queued" in t for t in timeline) and any("succeeded" in t for t in timeline), timeline
    assert page.console_errors == []
    page.screenshot(REPO_ROOT / SCREENSHOT if SCREENSHOT else tmp_path / "demo.png")
    print(f"demo: {weight_kb:.1f} KB loaded; fast label after {fast_ms:.0f} ms, slow label after {slow_ms:.0f} ms")


def test_a_page_on_a_local_dev_server_may_call_the_api_and_read_its_errors(stack: LocalStack, page: Page) -> None:
    with _page_server("127.0.0.1") as origin:
        dev_server = origin.replace("127.0.0.1", "localhost")  # another origin than the API's 127.0.0.1
        page.goto(f"{dev_server}/#{stack.api_url}|{stack.api_keys[0]}")
        assert page.wait_for("document.title.startsWith('waiting') ? null : document.title") == "answered 404 not_found"
    # The 404 is an answer the page reads, not a console error of a blocked request.
    assert not [e for e in page.console_errors if "CORS" in e], page.console_errors


def test_a_page_of_another_origin_is_blocked_by_the_browser(stack: LocalStack, page: Page) -> None:
    with _page_server("127.0.0.2") as origin:  # loopback, but not an origin the local stack allows
        page.goto(f"{origin}/#{stack.api_url}|{stack.api_keys[0]}")
        assert page.wait_for("document.title.startsWith('waiting') ? null : document.title") == "blocked TypeError"
    assert any("CORS" in e or "Access-Control-Allow-Origin" in e for e in page.console_errors), page.console_errors
