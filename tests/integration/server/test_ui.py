"""GET /ui/: the chat page and its bundled libraries, served by the real app on uvicorn.

What a browser does with the page is tested in a real headless Chromium where one is
installed (tests/system/test_ui_browser.py); here: what the server sends, and that nothing in it
points outside the server.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from localrun.server import ui
from localrun.store.local import Store

from support.server import LiveServer, add_model

pytestmark = [pytest.mark.server]

STATIC = Path(ui.__file__).resolve().parent.parent / "ui" / "static"
MAINTENANCE = STATIC.parent.parent.parent / "scripts" / "maintenance"
KEY = "ui-test-key-0123456789"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[LiveServer]:
    store = Store(tmp_path_factory.mktemp("ui") / "models")
    add_model(store, "tiny", tiny_model)
    server = LiveServer(store, api_key=KEY)
    yield server
    server.close()


def test_the_page_and_its_files_under_a_strict_policy(keyed: LiveServer) -> None:
    page = httpx.get(keyed.url + "/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe" not in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sorted(assets) == ["app.css", "app.js", "data:,", "vendor.css", "vendor.js"]
    assets.remove("data:,")  # the empty icon: no request for /favicon.ico
    for name in assets:  # served without the key: the page must load to ask for it
        answer = httpx.get(f"{keyed.url}/ui/{name}")
        assert answer.status_code == 200, name
        assert answer.headers["content-security-policy"] == csp
    assert httpx.get(keyed.url + "/ui", follow_redirects=False).headers["location"] == "/ui/"
    assert httpx.get(keyed.url + "/api/tags").status_code == 401  # the API keeps its key
    tags = httpx.get(keyed.url + "/api/tags", headers={"Authorization": f"Bearer {KEY}"})
    assert [m["name"] for m in tags.json()["models"]][:1] == ["tiny:latest"]


def test_nothing_but_the_listed_files(keyed: LiveServer) -> None:
    for name in ("secret.txt", "..%2F..%2Fpyproject.toml", "%2e%2e%2fserver%2fui.py", "src"):
        answer = httpx.get(f"{keyed.url}/ui/{name}")
        assert answer.status_code == 404, name
        assert answer.json()["code"] == "not_found"
    assert httpx.post(keyed.url + "/ui/").status_code in (401, 405)


def test_the_page_loads_nothing_from_elsewhere() -> None:
    for name in ("index.html", "app.js", "app.css"):
        text = (STATIC / name).read_text()
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", text), name
    # The hand-written page fetches only the server's own routes.
    fetched = re.findall(r'call\("([^"]+)"', (STATIC / "app.js").read_text())
    assert fetched and all(path.startswith("/api/") for path in fetched)
    # The bundle's sources and the command that rebuilds it are in the repository.
    assert (MAINTENANCE / "ui" / "package.json").is_file()
    assert (MAINTENANCE / "ui" / "package-lock.json").is_file()
    assert (MAINTENANCE / "build_ui.py").is_file()
    bundle = (STATIC / "vendor.js").read_text()
    assert "DOMPurify" in bundle and "LocalrunVendor" in bundle
    assert not re.search(r"""(?:fetch|import)\(\s*["']https?://""", bundle)
