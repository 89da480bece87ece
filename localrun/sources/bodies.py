"""A body from a peer that cannot be trusted (a registry, a hub), read raw and decoded in bounds.

`read_bounded` reads a small one (a manifest, an error, a token answer); `codings` and `decoded`
serve a file's bytes.

httpx decodes what Content-Encoding names, chains included (`gzip, gzip`), one whole socket
chunk at a time. 2.6 KB of a doubly gzipped manifest became a 3 GB `bytes` before any bound
could look at it (issue 76). So the raw bytes are read here, and each layer of the encoding is
undone a step (STEP bytes) at a time, its output bounded as it inflates. At most one step more
than the caller accepts is ever made. gzip, deflate and identity are read (what servers send,
though localrun asks for identity). Any other coding, or a chain of more than MAX_CODINGS, is
refused in one line, as is raw input past what the bound can need.
"""

from __future__ import annotations

import json
import re
import time
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

import httpx

from localrun.errors import DownloadError
from localrun.sources.base import reason

STEP = 64 << 10  # bytes a layer makes at a time
MAX_CODINGS = 2  # layers of a chain (one is what a server that compresses sends)
KNOWN = ("gzip", "x-gzip", "deflate")
SLACK = 64 << 10  # bytes a compressed layer may exceed what it holds (headers, stored blocks)
SMALL_DEADLINE = 120.0  # seconds a small body may take in all
_NUMBER = re.compile(r"[0-9]{1,18}\Z")  # a header's count (str.isdigit takes '²', int() not)


def read_bounded(response: httpx.Response, limit: int, what: str) -> bytes:
    """Return a response's body of at most `limit` bytes, read within SMALL_DEADLINE.

    Past either bound it raises DownloadError. The body is read raw and decoded here, within the
    bound as it inflates, never by httpx.
    """
    declared = response.headers.get("Content-Length", "")
    if _NUMBER.match(declared) and int(declared) > limit:
        raise DownloadError(f"{what} is {int(declared)} bytes; at most {limit} are read")
    applied = codings(response.headers, what)
    deadline = time.monotonic() + SMALL_DEADLINE
    received = 0

    def raw() -> Iterator[bytes]:
        nonlocal received
        for chunk in response.iter_raw():
            received += len(chunk)
            if received > limit + SLACK:  # what follows a stream's end counts too
                raise DownloadError(f"{what} is over {limit} bytes; at most that is read")
            if time.monotonic() > deadline:
                raise DownloadError(f"{what} took over {SMALL_DEADLINE:.0f} s; it was dropped")
            yield chunk

    data = bytearray()
    try:
        for piece in decoded(raw(), applied, limit, what):
            data += piece
            if len(data) > limit:
                raise DownloadError(f"{what} is over {limit} bytes; at most that is read")
    except httpx.HTTPError as exc:  # a broken connection
        raise DownloadError(f"{what}: {reason(exc)}") from None
    return bytes(data)


def json_or_none(data: bytes) -> Any:
    """JSON from a peer, or None where it is not JSON (or nested past the parser)."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def codings(headers: Any, what: str) -> list[str]:
    """Return the codings of a response's Content-Encoding, in the order they were applied.

    Identity is left out. Raises DownloadError for a coding not read here, or a chain too long.
    """
    found = [
        value.strip().lower()
        for value in headers.get_list("content-encoding", split_commas=True)
        if value.strip().lower() not in ("", "identity")
    ]
    for coding in found:
        if coding not in KNOWN:
            raise DownloadError(
                f"{what} came in the {coding[:40]!r} encoding, which localrun does not read",
                hint="localrun asks for no encoding (identity); gzip and deflate are read",
            )
    if len(found) > MAX_CODINGS:
        raise DownloadError(
            f"{what} came in {len(found)} layers of encoding ({', '.join(found)[:80]}); "
            f"at most {MAX_CODINGS} are read",
            hint="the server or something between us is misbehaving; nothing was saved",
        )
    return found


def decoded(raw: Iterable[bytes], applied: list[str], limit: int, what: str) -> Iterator[bytes]:
    """Yield the bytes of `raw` with the codings `applied` undone, last first.

    Each layer stops with DownloadError past `limit` bytes; an inner one, past `limit` and some
    slack. So no more than `limit` plus a step is ever made.
    """
    stream: Iterable[bytes] = raw
    for depth, coding in enumerate(reversed(applied)):
        inner = depth < len(applied) - 1  # its output is the next layer's compressed input
        stream = _layer(stream, coding, limit + SLACK if inner else limit, what)
    return iter(stream)


class Inflater:
    """One layer of gzip or deflate, undone a step at a time.

    No call makes more than STEP bytes, whatever the input holds, so a bomb inflates as slowly
    as its reader reads. Deflate is read with zlib's header or, as many servers send it,
    without (httpx's habit).
    """

    def __init__(self, coding: str) -> None:
        self.gzip = coding in ("gzip", "x-gzip")
        self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if self.gzip else zlib.MAX_WBITS)
        self.started = False  # some input was taken

    @property
    def ended(self) -> bool:
        """The compressed stream's end was read (what follows it is left, as httpx does)."""
        return bool(self._inflater.eof)

    def feed(self, data: bytes) -> Iterator[bytes]:
        """What `data` inflates to, a step at a time (zlib.error where it does not decode)."""
        inflater = self._inflater
        while not inflater.eof:
            try:
                out = inflater.decompress(data, STEP)
            except zlib.error:
                if self.gzip or self.started:
                    raise
                self._inflater = inflater = zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate
                self.started = True
                continue
            self.started = self.started or bool(data)
            data = inflater.unconsumed_tail
            if out:
                yield out
            # A step that came out full may leave output inside with no input left: go on.
            if not data and len(out) < STEP:
                break


def _layer(chunks: Iterable[bytes], coding: str, limit: int, what: str) -> Iterator[bytes]:
    """One coding undone, at most `limit` bytes of it (DownloadError past them)."""
    inflater = Inflater(coding)
    made = 0
    for data in chunks:
        try:
            for out in inflater.feed(data):
                made += len(out)
                if made > limit:
                    raise DownloadError(
                        f"{what} is over {limit} bytes decoded; at most that is read"
                    )
                yield out
        except zlib.error:
            raise DownloadError(f"{what}: its {coding} encoding does not decode") from None
    if inflater.started and not inflater.ended:
        raise DownloadError(f"{what}: its {coding} encoding ends before its stream does")
