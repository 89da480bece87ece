"""Images and audio in requests: read, bounded before decoding, and marked in the prompt text.

Every dialect turns its media parts (Ollama's `images`, OpenAI's `image_url` data URLs and
`input_audio`, Anthropic's `image` blocks, the Responses API's `input_image`) into `Media`. It puts
MARKER in the message's text where each one goes, in order. The runner hands the text and the media
to libmtmd, which replaces each marker with the model's own image or audio tokens. A marker the
client wrote itself is refused (`count_markers`), so text cannot claim a picture.

The bounds (config's LOCALRUN_MAX_MEDIA_BYTES, _MAX_MEDIA, _MAX_IMAGE_PIXELS, _MAX_AUDIO_SECONDS)
are checked here, where the bytes enter. An image's size is read from its header (Pillow opens
lazily), so a 30000x30000 PNG of a few kilobytes is refused without being decoded. Audio is bounded
by its bytes and its header's length here, and by its decoded length in the runner.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

from localrun.errors import BadRequestError, RequestTooLargeError
from localrun.settings import limits

# Where a medium goes in a message's text. Not llama.cpp's default (`<__media__>`), so a text
# that merely mentions that one stays text.
MARKER = "<__localrun_media__>"
KINDS = ("image", "audio")
IMAGE_FORMATS = "PNG, JPEG, WebP, GIF or BMP"
AUDIO_FORMATS = "WAV, MP3 or FLAC"
_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+)?((?:;[\w.+-]+=[\w.+-]+)*);base64,", re.ASCII)


@dataclass(frozen=True)
class Media:
    """One image or audio file as the client sent it (PNG, JPEG, ...; WAV, MP3, ...)."""

    kind: str  # "image" or "audio"
    data: bytes = field(repr=False)
    digest: str = field(default="", compare=False)  # sha256 of data, hex

    def __post_init__(self) -> None:
        if not self.digest:
            object.__setattr__(self, "digest", hashlib.sha256(self.data).hexdigest())

    def to_wire(self) -> dict[str, str]:
        """The JSON form a request carries to the runner."""
        return {"type": self.kind, "data": base64.b64encode(self.data).decode("ascii")}

    @classmethod
    def from_wire(cls, value: Any, where: str) -> Media:
        if not isinstance(value, dict) or value.get("type") not in KINDS:
            raise BadRequestError(f"{where} must be an image or an audio part")
        return decode(value.get("data"), where, value["type"])


def decode(value: Any, where: str, kind: str = "image") -> Media:
    """A base64 string (or a `data:` URL) as a medium of `kind`, bounded and checked."""
    if not isinstance(value, str) or not value:
        raise BadRequestError(f"{where} must be base64 data", hint=_hint(kind))
    if value.startswith("data:"):
        match = _DATA_URL.match(value)
        if match is None:
            raise BadRequestError(
                f"{where} is a data URL without base64 data", hint="send data:<type>;base64,<data>"
            )
        value = value[match.end() :]
    limit = limits.max_media_bytes()
    if len(value) // 4 * 3 > limit + 3:
        raise RequestTooLargeError(
            f"{where} is larger than {limit} bytes",
            hint="send a smaller file, or raise LOCALRUN_MAX_MEDIA_BYTES",
        )
    try:
        data = base64.b64decode(value.replace("\n", "").replace("\r", ""), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequestError(f"{where} is not valid base64", hint=_hint(kind)) from None
    media = Media(kind, data)
    check(media, where)
    return media


def from_url(url: Any, where: str) -> Media:
    """An OpenAI-style image URL: a data URL, since the server fetches nothing for a client.

    server.image_urls has already inlined the http(s) URLs that LOCALRUN_IMAGE_URL_HOSTS allows.
    """
    if not isinstance(url, str) or not url:
        raise BadRequestError(f"{where} must be a URL")
    if url.startswith("data:"):
        return decode(url, where, "image")
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    raise BadRequestError(
        f"{where} is a {scheme or 'relative'} URL; localrun takes images as data URLs "
        "(the server fetches nothing for a client unless LOCALRUN_IMAGE_URL_HOSTS names the host)",
        hint="send the image inline: data:image/png;base64,...",
    )


def check(media: Media, where: str) -> None:
    """Refuse a medium that is not what it claims or is over a bound, before decoding it."""
    if media.kind == "image":
        image_size(media.data, where)
        return
    kind = _audio_format(media.data)
    if not kind:
        raise BadRequestError(f"{where} is not audio ({AUDIO_FORMATS})", hint=_hint("audio"))
    seconds, limit = audio_seconds(media.data), limits.max_audio_seconds()
    if seconds is None and kind != "mp3":  # MP3 frames may stand without a header to read
        raise BadRequestError(f"{where} is not a readable {kind.upper()} file", hint=_hint("audio"))
    if seconds is not None and seconds > limit:
        raise too_long(where, seconds, limit)


def audio_seconds(data: bytes) -> float | None:
    """An audio file's length as its header tells it, or None where it tells none.

    mutagen reads WAV, FLAC and MP3 headers. The runner measures the decoded length again.
    """
    import mutagen

    try:
        info = getattr(mutagen.File(io.BytesIO(data)), "info", None)
    except Exception:  # mutagen raises its own errors, and more, on a broken header
        return None
    length = getattr(info, "length", None)
    return float(length) if isinstance(length, (int, float)) else None


def too_long(where: str, seconds: float, limit: int) -> BadRequestError:
    return BadRequestError(
        f"{where} is {seconds:.1f} s of audio, more than the {limit} s allowed",
        hint="send a shorter clip, or raise LOCALRUN_MAX_AUDIO_SECONDS",
    )


def image_size(data: bytes, where: str) -> tuple[int, int]:
    """An image's width and height from its header, refused if it has too many pixels."""
    from PIL import Image

    limit = limits.max_image_pixels()
    too_many = BadRequestError(
        f"{where} has more than the {limit} pixels allowed",
        hint="send a smaller image, or raise LOCALRUN_MAX_IMAGE_PIXELS",
    )
    width = height = 0  # read only where the header was one Pillow knows
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                known = image.format in ("PNG", "JPEG", "WEBP", "GIF", "BMP", "MPO")
    except Image.DecompressionBombError:  # Pillow's own bound, far above ours
        raise too_many from None
    except Exception:  # Pillow raises anything from OSError to SyntaxError on garbage
        known = False
    if not known:
        raise BadRequestError(f"{where} is not an image ({IMAGE_FORMATS})", hint=_hint("image"))
    if width * height > limit:
        raise too_many
    return width, height


def rgb(media: Media, where: str) -> tuple[int, int, bytes]:
    """A checked image decoded to RGB bytes (the first frame of an animation)."""
    from PIL import Image

    width, height = image_size(media.data, where)
    try:
        with Image.open(io.BytesIO(media.data)) as image:
            image.seek(0)
            pixels = image.convert("RGB")
    except Exception as exc:
        raise BadRequestError(
            f"{where} could not be decoded: {type(exc).__name__}", hint=_hint("image")
        ) from None
    return width, height, pixels.tobytes()


def _audio_format(data: bytes) -> str | None:
    head = data[:12]
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "mp3"
    return None


def _hint(kind: str) -> str:
    formats = IMAGE_FORMATS if kind == "image" else AUDIO_FORMATS
    return f"send a {formats} file, base64-encoded"


def check_count(n: int) -> None:
    limit = limits.max_media()
    if n > limit:
        raise BadRequestError(
            f"the request has {n} images and audio files; at most {limit} are allowed",
            hint="send fewer, or raise LOCALRUN_MAX_MEDIA",
        )


def read_file(path: str, kind: str = "image") -> str:
    """An image (or audio) file as the base64 a request carries, checked as a request's is."""
    from pathlib import Path

    from localrun.errors import FileNotFoundError_, NotRegularFileError

    limit = limits.max_media_bytes()
    file = Path(path).expanduser()
    try:
        with file.open("rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise FileNotFoundError_(
            f"{path}: no such file", hint=f"check the path of the {kind}"
        ) from None
    except OSError as exc:
        raise NotRegularFileError(
            f"cannot read {path}: {exc.strerror or exc}", hint=f"point to a {kind} file"
        ) from None
    if len(data) > limit:
        raise RequestTooLargeError(
            f"{path} is larger than {limit} bytes",
            hint="send a smaller file, or raise LOCALRUN_MAX_MEDIA_BYTES",
        )
    check(Media(kind, data), path)
    return base64.b64encode(data).decode("ascii")


def ollama_images(value: Any, where: str, kind: str = "image") -> list[Media]:
    """Ollama's `images` (and localrun's `audio`, shaped alike): a list of base64 strings."""
    if value is None or value == []:
        return []
    if not isinstance(value, list):
        raise BadRequestError(f"{where} must be a list of base64 {kind} files")
    check_count(len(value))
    return [decode(item, f"{where}[{i}]", kind) for i, item in enumerate(value)]


def ollama_media(message: dict[str, Any], where: str) -> list[Media]:
    """An Ollama-style message's `images`, then its `audio` (localrun's field, as `images`)."""
    images = ollama_images(message.get("images"), f"{where}.images")
    return images + ollama_images(message.get("audio"), f"{where}.audio", "audio")


def with_images(message: dict[str, Any], images: list[Media]) -> dict[str, Any]:
    """`message` with `images` (or audio) before its text, as Ollama puts images.

    Each gets a marker, and Ollama's own fields for them are dropped.
    """
    out = {k: v for k, v in message.items() if k not in ("images", "audio")}
    if not images:
        return out
    out["content"] = MARKER * len(images) + str(message.get("content") or "")
    out["media"] = [m.to_wire() for m in images] + list(message.get("media") or [])
    return out


def count_markers(text: str, where: str) -> None:
    """Refuse client text holding the marker: only a media part may put one there."""
    if MARKER in text:
        raise BadRequestError(
            f"{where} contains {MARKER}, which localrun keeps for where an image goes",
            hint="send the image as an image part",
        )
