"""Images and audio for the engine: the model's projector, media prompts and their evaluation.

The projector is llama.cpp's libmtmd. It splits a prompt at its markers
(localrun.request.media.MARKER) into text chunks and one chunk per image or audio file, wrapped in
the model's own tokens. In a prompt the engine sees, each medium stands as as many placeholder ids
as it takes positions. They are negative (never a vocabulary id) and derived from the medium's
sha256, so the same image at the same place is the same run of ids. A slot that already holds a
conversation's image therefore keeps it by the same prefix match that keeps text: the image is not
encoded again when the conversation continues. A different image, or the same one elsewhere, matches
nothing.

A medium is encoded and decoded into its slot's sequence on the engine's loop, alone (its
embeddings are a llama_batch of their own), before the step's token batch.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from localrun.engine.library.native import lc
from localrun.engine.weights import native_log
from localrun.errors import BadRequestError, EngineError, ModelLoadError
from localrun.request import media as media_mod
from localrun.settings import limits

CHUNK_TEXT = 0
# Placeholder ids: -(1 + (36 bits of the medium's sha256) * 2^20 + position in the medium),
# within an int64 (slot caches may become arrays).
_SPAN = 1 << 20


def _mtmd() -> Any:
    from llama_cpp import mtmd_cpp

    return mtmd_cpp


@dataclass
class Span:
    """One medium in a prompt: where it starts, how many positions it takes, its chunk."""

    start: int
    length: int
    chunk: Any  # mtmd_input_chunk*, owned by its MediaPrompt's chunks
    kind: str


@dataclass
class MediaPrompt:
    """A prompt with images or audio: its ids (placeholders for the media) and its spans."""

    tokens: list[int]
    spans: dict[int, Span]  # by start
    chunks: Any = field(default=None, repr=False)  # mtmd_input_chunks*, freed by free()
    media_tokens: int = 0

    def next_span(self, done: int) -> int:
        """The start of the first span at or after position `done` (len(tokens) if none)."""
        starts = [s for s in self.spans if s >= done]
        return min(starts) if starts else len(self.tokens)

    def move(self, offset: int, tokens: list[int]) -> None:
        """The media `offset` positions later, in `tokens` (context put before the prompt)."""
        self.spans = {
            start + offset: Span(start + offset, span.length, span.chunk, span.kind)
            for start, span in self.spans.items()
        }
        self.tokens = tokens

    def free(self) -> None:
        if self.chunks is not None:
            _mtmd().mtmd_input_chunks_free(self.chunks)
            self.chunks = None


def placeholder(digest: str, index: int) -> int:
    return -(1 + int(digest[:9], 16) * _SPAN + index)


class Projector:
    """A model's projector: what it takes (images, audio) and how they become its input."""

    def __init__(self, path: str, model: Any, *, n_threads: int, use_gpu: bool) -> None:
        mt = _mtmd()
        self._mt = mt
        mt.mtmd_log_set(native_log(), ctypes.c_void_p(0))
        mt.mtmd_helper_log_set(native_log(), ctypes.c_void_p(0))
        params = mt.mtmd_context_params_default()
        params.use_gpu = use_gpu
        params.n_threads = n_threads
        params.print_timings = False
        params.warmup = False
        self._marker = media_mod.MARKER.encode()
        params.media_marker = self._marker
        self._ctx = mt.mtmd_init_from_file(path.encode(), model, params)
        if not self._ctx:
            raise ModelLoadError(
                f"llama.cpp could not load the projector {path}",
                hint="the projector must be the model's own (its mmproj GGUF)",
            )
        self.vision = bool(mt.mtmd_support_vision(self._ctx))
        self.audio = bool(mt.mtmd_support_audio(self._ctx))
        self.audio_rate = int(mt.mtmd_get_audio_sample_rate(self._ctx)) if self.audio else 0
        self.mrope = bool(mt.mtmd_decode_use_mrope(self._ctx))
        # libmtmd's context is not made for two threads at once: requests are prepared on the
        # runner's threads while the loop encodes.
        self._lock = threading.Lock()

    def close(self) -> None:
        if self._ctx:
            self._mt.mtmd_free(self._ctx)
            self._ctx = None

    def tokenize(
        self, text: str, media: Sequence[media_mod.Media], *, add_special: bool
    ) -> MediaPrompt:
        """`text` (with one marker per medium) and `media` as a prompt for the engine."""
        mt = self._mt
        if self.mrope:
            raise BadRequestError(
                "this model places image tokens with M-RoPE (the Qwen2-VL family), which "
                "localrun does not run yet",
                hint="use a vision model without M-RoPE (Gemma 3, LLaVA, SmolVLM, Mistral)",
            )
        if text.count(media_mod.MARKER) != len(media):
            raise BadRequestError(
                f"the prompt has {text.count(media_mod.MARKER)} places for media but "
                f"{len(media)} were sent",
                hint="the model's template may drop images it does not expect",
            )
        bitmaps = [self._bitmap(m, f"media[{i}]") for i, m in enumerate(media)]
        try:
            return self._tokenize(text, media, bitmaps, add_special)
        finally:
            for bitmap in bitmaps:
                mt.mtmd_bitmap_free(bitmap)

    def _tokenize(
        self, text: str, media: Sequence[media_mod.Media], bitmaps: list[Any], add_special: bool
    ) -> MediaPrompt:
        mt = self._mt
        raw = text.encode()
        given = mt.mtmd_input_text(raw, len(raw), add_special, True)
        array = (mt.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
        chunks = mt.mtmd_input_chunks_init()
        prompt = MediaPrompt([], {}, chunks)
        try:
            with self._lock:
                rc = mt.mtmd_tokenize(self._ctx, chunks, ctypes.byref(given), array, len(bitmaps))
            if rc != 0:
                raise BadRequestError(
                    f"the projector could not take the prompt's media (llama.cpp code {rc})",
                    hint="send images (or audio) this model was made for",
                )
            index = 0
            for i in range(mt.mtmd_input_chunks_size(chunks)):
                chunk = mt.mtmd_input_chunks_get(chunks, i)
                kind = mt.mtmd_input_chunk_get_type(chunk)
                if kind == CHUNK_TEXT:
                    n = ctypes.c_size_t()
                    ids = mt.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                    prompt.tokens += ids[: n.value]
                    continue
                length = int(mt.mtmd_input_chunk_get_n_pos(chunk))
                digest = media[min(index, len(media) - 1)].digest
                start = len(prompt.tokens)
                prompt.spans[start] = Span(start, length, chunk, "image" if kind == 1 else "audio")
                prompt.tokens += [placeholder(digest, j) for j in range(length)]
                prompt.media_tokens += length
                index += 1
        except BaseException:
            prompt.free()
            raise
        if prompt.tokens and prompt.tokens[-1] < 0:
            prompt.free()
            raise BadRequestError(
                "the prompt ends with an image or audio; a prompt must end with text",
                hint="ask something about it after it",
            )
        return prompt

    def _bitmap(self, medium: media_mod.Media, where: str) -> Any:
        mt = self._mt
        if medium.kind == "image":
            if not self.vision:
                raise BadRequestError(
                    "this model's projector takes audio, not images", hint="send audio"
                )
            width, height, pixels = media_mod.rgb(medium, where)
            data = (ctypes.c_uint8 * len(pixels)).from_buffer_copy(pixels)
            bitmap = mt.mtmd_bitmap_init(width, height, data)
        else:
            if not self.audio:
                raise BadRequestError(
                    "this model's projector takes images, not audio", hint="send an image"
                )
            buf = (ctypes.c_uint8 * len(medium.data)).from_buffer_copy(medium.data)
            with self._lock:
                bitmap = mt.mtmd_helper_bitmap_init_from_buf(
                    self._ctx, buf, len(medium.data), False
                )
            if bitmap:
                seconds = mt.mtmd_bitmap_get_n_bytes(bitmap) / 4 / max(1, self.audio_rate)
                if seconds > limits.max_audio_seconds():
                    mt.mtmd_bitmap_free(bitmap)
                    raise media_mod.too_long(where, seconds, limits.max_audio_seconds())
        if not bitmap:
            raise BadRequestError(
                f"{where} could not be read as {medium.kind}",
                hint=f"send a {media_mod.AUDIO_FORMATS} file"
                if medium.kind == "audio"
                else f"send a {media_mod.IMAGE_FORMATS} file",
            )
        mt.mtmd_bitmap_set_id(bitmap, medium.digest.encode())
        return bitmap

    def evaluate(self, lctx: Any, span: Span, n_past: int, seq: int, n_batch: int) -> None:
        """Encode `span`'s medium and decode it into sequence `seq` at position `n_past`."""
        mt = self._mt
        new_n_past = lc.llama_pos(0)
        with self._lock:
            rc = mt.mtmd_helper_eval_chunk_single(
                self._ctx, lctx, span.chunk, n_past, seq, n_batch, False, ctypes.byref(new_n_past)
            )
        if rc != 0:
            raise EngineError(f"llama.cpp failed to evaluate an {span.kind} (code {rc})")
