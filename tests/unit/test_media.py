"""Images and audio as requests send them (localrun.request.media): read, bounded before decoding,
and marked in the text; and the PROJECTOR line of a Modelfile."""

from __future__ import annotations

import io
import time
import tracemalloc

import pytest
from PIL import Image

from localrun.errors import BadRequestError, ModelfileError, RequestTooLargeError
from localrun.recipes import modelfile
from localrun.request import media
from localrun.server.messages import chat_messages

from support.media import b64, bomb, wav


def png(width: int = 8, height: int = 6, color: tuple[int, int, int] = (200, 30, 40)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, "PNG")
    return out.getvalue()


def test_an_image_is_read_from_base64_and_data_urls() -> None:
    data = png()
    plain = media.decode(b64(data), "images[0]")
    url = media.decode(f"data:image/png;base64,{b64(data)}", "x")
    assert plain == url and plain.kind == "image" and plain.data == data
    assert len(plain.digest) == 64
    assert media.rgb(plain, "x")[:2] == (8, 6)
    assert media.Media.from_wire(plain.to_wire(), "m") == plain


def test_a_decompression_bomb_is_a_fast_400_with_bounded_memory() -> None:
    started = time.perf_counter()
    tracemalloc.start()
    with pytest.raises(BadRequestError, match=r"more than the \d+ pixels allowed"):
        media.decode(b64(bomb()), "images[0]")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert time.perf_counter() - started < 1.0
    assert peak < 5_000_000
    # Below Pillow's own bound but above localrun's.
    with pytest.raises(BadRequestError, match="pixels allowed"):
        media.decode(b64(bomb(5000, 5000)), "images[0]")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b64(b"plain text, not a picture"), "is not an image"),
        ("!!!not base64!!!", "not valid base64"),
        ("data:image/png,rawbytes", "without base64 data"),
        (42, "must be base64 data"),
    ],
)
def test_what_is_not_an_image_is_a_400_naming_the_part(value: object, message: str) -> None:
    with pytest.raises(BadRequestError, match=message) as caught:
        media.decode(value, "messages[0].images[1]")
    assert "messages[0].images[1]" in str(caught.value)


def test_bounds_come_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALRUN_MAX_MEDIA_BYTES", "100")
    with pytest.raises(RequestTooLargeError, match="larger than 100 bytes"):
        media.decode(b64(png(64, 64)), "images[0]")
    monkeypatch.setenv("LOCALRUN_MAX_MEDIA_BYTES", str(1 << 20))
    monkeypatch.setenv("LOCALRUN_MAX_IMAGE_PIXELS", "100")
    with pytest.raises(BadRequestError, match="pixels"):
        media.decode(b64(png(20, 20)), "images[0]")
    monkeypatch.setenv("LOCALRUN_MAX_MEDIA", "2")
    with pytest.raises(BadRequestError, match="at most 2"):
        chat_messages([{"role": "user", "content": "hi", "images": [b64(png())] * 3}])


def test_an_http_image_is_refused_the_server_fetches_nothing() -> None:
    with pytest.raises(BadRequestError, match="fetches nothing"):
        media.from_url("https://example.com/cat.png", "image_url")


def test_audio_is_recognised_by_its_header() -> None:
    clip = media.decode(b64(wav(0.5)), "input_audio", "audio")
    assert clip.kind == "audio"
    with pytest.raises(BadRequestError, match="is not audio"):
        media.decode(b64(png()), "input_audio", "audio")


def test_dialects_put_a_marker_where_each_image_goes() -> None:
    image = b64(png())
    [ollama] = chat_messages([{"role": "user", "content": "What is it?", "images": [image]}])
    assert ollama["content"] == media.MARKER + "What is it?"
    assert [m["type"] for m in ollama["media"]] == ["image"]
    parts = [
        {"type": "text", "text": "Compare "},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
        {"type": "text", "text": " with "},
        {"type": "image_url", "image_url": f"data:image/png;base64,{b64(png(4, 4))}"},
    ]
    [openai] = chat_messages([{"role": "user", "content": parts}], openai=True)
    assert openai["content"] == f"Compare {media.MARKER} with {media.MARKER}"
    assert len(openai["media"]) == 2


def test_text_cannot_claim_an_image() -> None:
    with pytest.raises(BadRequestError, match="keeps for where an image goes"):
        chat_messages([{"role": "user", "content": f"look {media.MARKER}"}])


def test_the_projector_line_round_trips() -> None:
    parsed = modelfile.parse("FROM ./model.gguf\nPROJECTOR ./mmproj model.gguf\n")
    assert parsed.projector == "./mmproj model.gguf"
    assert modelfile.parse(str(parsed)) == parsed
    with pytest.raises(ModelfileError, match="PROJECTOR given twice"):
        modelfile.parse("FROM a\nPROJECTOR b\nPROJECTOR c\n")
    with pytest.raises(ModelfileError) as caught:
        modelfile.parse("FROM ./model.gguf\nFROM ./mmproj.gguf\n")
    assert "PROJECTOR" in (caught.value.hint or "")
