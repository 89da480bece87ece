"""Images and sounds as requests carry them: small real PNGs and WAVs, base64 and data URLs,
and a PNG whose header claims more pixels than a machine holds."""

from __future__ import annotations

import base64
import io
import struct
import wave
import zlib

import numpy as np
from PIL import Image


def picture(color: tuple[int, int, int], size: tuple[int, int] = (48, 40)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "PNG")
    return out.getvalue()


RED = picture((230, 20, 20))


BLUE = picture((20, 20, 230))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_url(data: bytes) -> str:
    return f"data:image/png;base64,{b64(data)}"


def bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A PNG whose header claims width x height pixels, in a few hundred bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\0" * 4096)
    parts = chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + parts


def wav(seconds: float, rate: int = 16000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\0\0" * int(seconds * rate))
    return out.getvalue()


def clip(seconds: float, hz: float = 440.0, rate: int = 16000) -> bytes:
    """A sine tone (hz > 0) or white noise (hz 0) as a 16-bit mono WAV."""
    n = int(seconds * rate)
    if hz:
        samples = np.sin(2 * np.pi * hz * np.arange(n) / rate) * 12000
    else:
        samples = np.random.default_rng(3).standard_normal(n) * 6000
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype(np.int16).tobytes())
    return out.getvalue()


TONE, NOISE = clip(1.5), clip(1.5, hz=0)


GREEDY = {"temperature": 0, "num_predict": 8, "seed": 1}
