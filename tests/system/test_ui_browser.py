"""The chat page in a real headless Chromium (Debian's `chromium`), driven by Playwright,
against the real app on uvicorn. The model answers through the scripted fake backend, slowly,
so that streaming and stopping can be seen (the page is what is tested, not the engine).

Skipped where no Chromium or Playwright is installed: `apt-get install chromium` and
`pip install playwright` (Playwright drives the system browser; it downloads none).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localrun.scheduler import Scheduler
from localrun.sources import obtain
from localrun.store import reference
from localrun.store.local import Store

from support import ROOT
from support.server import LiveServer, add_model

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no Chromium installed (apt-get install chromium)", allow_module_level=True)

pytestmark = [pytest.mark.server, pytest.mark.slow]

KEY = "page-test-key-0123456789"
REPLY = (
    "Here is **bold** text, raw <b>html</b> <img src=x onerror=alert(1)> kept as text, and "
    "code:\n\n```python\nprint('hi')\n```\n" + "and more " * 60
)
JSON_REPLY = '{"fruit": "apple", "count": 3}'
SCREENSHOT = ROOT / "scripts" / "maintenance" / "ui" / "chat-page.png"


def _server(
    tmp_path: Path, tiny_model: Path, replies: tuple[str, ...] = (REPLY,), **kw: Any
) -> LiveServer:
    store = Store(tmp_path / "models")
    add_model(store, "tiny", tiny_model)
    options = {"replies": list(replies), "delay": 0.02}
    scheduler = Scheduler(store, num_parallel=2, backend="fake", backend_options=options)
    return LiveServer(store, scheduler, **kw)


def _grows(locator: Any, seconds: float = 10) -> list[str]:
    """The texts `locator` showed, polled until it held 40 characters (in order)."""
    seen: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        text = locator.inner_text() if locator.count() else ""
        if text and (not seen or text != seen[-1]):
            seen.append(text)
        if len(text) >= 40:
            break
        time.sleep(0.05)
    return seen


def _ask(browser: Any, url: str, text: str, **page_options: Any) -> Any:
    """A new page on the chat page at `url`, with `text` sent to the first model."""
    page = browser.new_page(**page_options)
    page.goto(url + "/ui/")
    page.locator("#model option").first.wait_for(state="attached")
    page.fill("#input", text)
    page.keyboard.press("Enter")
    return page


@pytest.fixture
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def test_a_conversation_streams_stops_and_stays(
    browser: Any, tmp_path: Path, tiny_model: Path
) -> None:
    server = _server(tmp_path, tiny_model)
    try:
        page = browser.new_page()
        outside: list[str] = []
        page.on(
            "request", lambda r: None if r.url.startswith(server.url) else outside.append(r.url)
        )
        failures: list[str] = []
        page.on("pageerror", lambda e: failures.append(str(e)))
        page.goto(server.url + "/ui/")
        page.locator("#model option").first.wait_for(state="attached")
        page.select_option("#model", "tiny:latest")
        page.fill("#input", "Show me some code")
        page.keyboard.press("Enter")
        # The answer streams in: its text grows while the Stop button shows.
        page.wait_for_selector("#stop:not([hidden])")
        body = page.locator(".message.assistant .body")
        seen = _grows(body)
        # (Markdown re-renders as it goes: "**bol" becomes bold once closed, so not monotonic.)
        assert len(seen) >= 3 and len(seen[-1]) > len(seen[0]), "text appears as it streams"
        page.wait_for_selector(".message.assistant strong")  # Markdown, rendered
        page.wait_for_selector(".message.assistant pre code.hljs")  # highlighted code
        page.wait_for_selector(".message.assistant pre .copy")
        first = page.locator(".message.assistant").first
        assert "<b>html</b>" in first.inner_text() and first.locator("img, b").count() == 0
        # Escape stops it: the server cancels the generation, the page keeps what came.
        page.keyboard.press("Escape")
        page.wait_for_selector("#send:not([hidden])")
        timings = page.inner_text(".message.assistant .timings")
        assert "stopped" in timings and "first token" in timings
        shown = page.inner_text(".message.assistant .body")
        assert 0 < len(shown) < len(REPLY)
        # Reloaded, the conversation is still there (the browser's storage).
        page.reload()
        page.wait_for_selector(".message.user")
        assert page.inner_text("#conversations").startswith("Show me some code")
        assert page.inner_text(".message.user") == "Show me some code"
        # A new chat; Shift+Enter adds a line to the message.
        page.click("#new-chat")
        assert page.locator("#conversations li").count() == 2
        page.click("#input")
        page.keyboard.type("first line")
        page.keyboard.press("Shift+Enter")
        page.keyboard.type("second line")
        assert page.input_value("#input") == "first line\nsecond line"
        page.keyboard.press("Enter")
        page.locator(".message.assistant .timings").wait_for(timeout=60_000)
        assert page.inner_text(".message.user") == "first line\nsecond line"
        page.click("#conversations li:nth-child(2) .open")  # back to the first conversation
        assert page.inner_text(".message.user") == "Show me some code"
        # Export (JSON and Markdown), rename and delete.
        with page.expect_download() as download:
            page.click("#export-json")
        exported = json.loads(Path(download.value.path()).read_text())
        assert [m["role"] for m in exported["messages"]][:2] == ["user", "assistant"]
        with page.expect_download() as download:
            page.click("#export-md")
        assert "**You:**" in Path(download.value.path()).read_text()
        page.once("dialog", lambda dialog: dialog.accept("Code chat"))
        page.click("#conversations li.current .rename")
        assert page.inner_text("#conversations li.current .open") == "Code chat"
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("#conversations li.current .delete")
        assert page.locator("#conversations li").count() == 1
        kept = json.loads(page.evaluate("localStorage.getItem('localrun.conversations')"))
        assert [c["title"] for c in kept] == ["first line"]
        assert failures == [] and outside == []
    finally:
        server.close()


def test_a_json_answer_shows_as_json(browser: Any, tmp_path: Path, tiny_model: Path) -> None:
    server = _server(tmp_path, tiny_model, (JSON_REPLY,))
    try:
        page = _ask(browser, server.url, "A fruit as JSON")
        page.locator(".message.assistant pre code.language-json").wait_for()
        assert '"fruit": "apple"' in page.inner_text(".message.assistant")  # indented
    finally:
        server.close()


HAIKU = "An old silent pond\nA frog jumps into the pond\nSplash! Silence again."


def test_an_answers_line_breaks_are_kept(browser: Any, tmp_path: Path, tiny_model: Path) -> None:
    server = _server(tmp_path, tiny_model, (HAIKU + "\n\nA second paragraph.",))
    try:
        page = _ask(browser, server.url, "A haiku, please")
        page.locator(".message.assistant .timings").wait_for(timeout=60_000)
        body = page.locator(".message.assistant .body")
        assert body.locator("p").first.locator("br").count() == 2  # within the paragraph
        assert body.inner_text().startswith(HAIKU)
        assert body.locator("p").count() == 2
    finally:
        server.close()


def test_the_page_asks_for_the_api_key(browser: Any, tmp_path: Path, tiny_model: Path) -> None:
    server = _server(tmp_path, tiny_model, api_key=KEY)
    try:
        page = browser.new_page()
        page.goto(server.url + "/ui/")
        page.wait_for_selector("#key-dialog[open]")
        page.fill("#key", KEY)
        page.keyboard.press("Enter")
        page.locator("#model option").first.wait_for(state="attached")
        assert page.evaluate("sessionStorage.getItem('localrun.apiKey')") == KEY
        assert page.evaluate("localStorage.getItem('localrun.apiKey')") is None
    finally:
        server.close()


def test_smollm2_on_a_phone_sized_screen(
    browser: Any, tmp_path: Path, smollm2_path: str, tiny_model: Path
) -> None:
    """The real model, streamed into a 390-pixel-wide page; the screenshot in the README."""

    store = Store(tmp_path / "models")
    obtain.find(store, reference.parse("smollm2:135m"))
    server = LiveServer(store, Scheduler(store, num_parallel=1))
    try:
        page = browser.new_page(viewport={"width": 390, "height": 800})
        page.goto(server.url + "/ui/")
        page.locator("#model option").first.wait_for(state="attached")
        page.select_option("#model", "smollm2:135m")
        assert (
            not page.locator("#sidebar").is_visible()
            or page.locator("#sidebar").bounding_box()["x"] < 0
        )  # tucked away on a narrow screen
        page.click("#toggle-settings")  # the conversation's parameters: greedy, repeatable
        page.fill("#temperature", "0")
        page.fill("#seed", "1")
        page.click("#toggle-settings")
        page.fill("#input", "What is the capital of France? Answer in one sentence.")
        page.keyboard.press("Enter")
        page.wait_for_selector(".message.assistant .timings", timeout=120_000)
        answer = page.inner_text(".message.assistant .body")
        assert "Paris" in answer
        assert "tokens/s" in page.inner_text(".message.assistant .timings")
        page.click("#toggle-sidebar")
        page.wait_for_timeout(300)
        assert page.locator("#sidebar").bounding_box()["x"] >= 0
        if os.environ.get("LOCALRUN_UI_SCREENSHOT"):  # refresh the README's picture
            page.set_viewport_size({"width": 1100, "height": 620})
            page.wait_for_timeout(300)
            page.screenshot(path=str(SCREENSHOT))
    finally:
        server.close()


def test_the_sidebar_on_a_phone_closes_every_way_people_try(
    browser: Any, tmp_path: Path, tiny_model: Path
) -> None:
    store = Store(tmp_path / "models")
    add_model(store, "tiny", tiny_model)
    server = LiveServer(store, Scheduler(store, backend="fake"))
    try:
        page = browser.new_page(viewport={"width": 390, "height": 800})
        page.goto(server.url + "/ui/")
        page.locator("#model option").first.wait_for(state="attached")
        sidebar, toggle = page.locator("#sidebar"), page.locator("#toggle-sidebar")

        def is_open() -> bool:
            page.wait_for_timeout(250)  # the slide
            return bool(sidebar.bounding_box()["x"] >= 0)

        assert not is_open() and toggle.get_attribute("aria-expanded") == "false"
        for close in (
            lambda: page.keyboard.press("Escape"),
            lambda: page.mouse.click(375, 400),  # beside the sidebar, on the page behind it
            lambda: page.click("#close-sidebar"),
            lambda: page.click("#new-chat"),
        ):
            toggle.click()
            assert is_open() and toggle.get_attribute("aria-expanded") == "true"
            assert page.locator("#close-sidebar").is_visible()
            close()
            assert not is_open() and toggle.get_attribute("aria-expanded") == "false"
            assert page.locator("#backdrop").is_hidden()
        # On a wide screen the sidebar is simply there, without a close button or a backdrop.
        page.set_viewport_size({"width": 1100, "height": 700})
        assert is_open() and not page.locator("#close-sidebar").is_visible()
    finally:
        server.close()


def test_thinking_is_folded_away(browser: Any, tmp_path: Path, tiny_thinking_model: Path) -> None:
    store = Store(tmp_path / "models")
    add_model(store, "thinker", tiny_thinking_model)
    replies = {"replies": ["<think>Paris is the capital.</think>It is **Paris**."]}
    server = LiveServer(store, Scheduler(store, backend="fake", backend_options=replies))
    try:
        page = _ask(browser, server.url, "Capital of France?")
        page.wait_for_selector(".message.assistant .timings")
        folded = page.locator(".message.assistant details.thinking")
        assert folded.get_attribute("open") is None  # folded away
        thought = folded.locator(".thinking-text")
        assert thought.text_content() == "Paris is the capital." and not thought.is_visible()
        folded.locator("summary").click()  # shown on request
        assert thought.is_visible()
        assert page.inner_text(".message.assistant .body") == "It is Paris."
    finally:
        server.close()


def test_an_attached_image_is_shown_and_sent(
    browser: Any, tmp_path: Path, fixtures_dir: Path
) -> None:
    """Picked images show above the message box (each can be removed), go with the message,
    show in it, and reach the model: the answer is the API's to the same image and text."""
    import base64

    import httpx
    from PIL import Image
    from testmodels.projectors import write_tiny_vision

    model, projector = write_tiny_vision(fixtures_dir / "vision-ui")
    store = Store(tmp_path / "models")
    add_model(store, "vis", model, f"PROJECTOR {projector}\nPARAMETER temperature 0\n")
    server = LiveServer(store, Scheduler(store, num_parallel=1))
    red, blue = tmp_path / "red.png", tmp_path / "blue.png"
    Image.new("RGB", (30, 30), (230, 20, 20)).save(red)
    Image.new("RGB", (30, 30), (20, 20, 230)).save(blue)
    try:
        page = browser.new_page()
        page.goto(server.url + "/ui/")
        page.locator("#model option").first.wait_for(state="attached")
        page.set_input_files("#attach-file", [str(blue), str(red)])
        page.locator("#attachments img").nth(1).wait_for()
        page.locator("#attachments .remove").first.click()  # blue goes
        assert page.locator("#attachments img").count() == 1
        page.fill("#input", "the a")
        page.keyboard.press("Enter")
        page.locator(".message.assistant .timings").wait_for(timeout=60_000)
        assert page.locator(".message.user .images img").count() == 1
        assert page.locator("#attachments img").count() == 0
        shown = page.inner_text(".message.assistant .body").strip()
        body = {
            "model": "vis",
            "stream": False,
            "messages": [
                {
                    "role": "user",
                    "content": "the a",
                    "images": [base64.b64encode(red.read_bytes()).decode()],
                }
            ],
        }
        answer = httpx.post(f"{server.url}/api/chat", json=body, timeout=60).json()
        assert shown == answer["message"]["content"].strip()
        # An image pasted into the message box, and one dropped on the page, attach too.
        page.evaluate(
            """(b64) => {
              const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
              const holding = () => {
                const data = new DataTransfer();
                data.items.add(new File([bytes], "red.png", {type: "image/png"}));
                return data;
              };
              const options = {bubbles: true, cancelable: true};
              document.getElementById("input").dispatchEvent(
                new ClipboardEvent("paste", {...options, clipboardData: holding()}));
              document.querySelector("main").dispatchEvent(
                new DragEvent("drop", {...options, dataTransfer: holding()}));
            }""",
            base64.b64encode(red.read_bytes()).decode(),
        )
        page.locator("#attachments img").nth(1).wait_for()
        assert page.locator("#attachments img").count() == 2
    finally:
        server.close()
