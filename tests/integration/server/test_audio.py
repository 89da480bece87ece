"""Audio through the dialects that carry it, on a tiny random-weight audio model and its
Qwen2-Audio-style projector run by the real llama.cpp (libmtmd: its own WAV decoding and
Whisper preprocessing) in the real server, with the official clients."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from testmodels.projectors import write_tiny_audio

from localrun.request import media
from localrun.scheduler import Scheduler
from localrun.store.local import Store

from support.cli import assert_one_line_error
from support.media import NOISE, TONE, b64, clip
from support.server import LiveServer, add_model, post

pytestmark = [pytest.mark.server, pytest.mark.model]

GREEDY = {"temperature": 0, "num_predict": 8, "seed": 1, "repeat_penalty": 1.0}
MAX_SECONDS = 3
# One 30-second window of Whisper's mel frames: 3000 frames, 1500 after the convolutions, 750
# after the projector's average pool.
CLIP_TOKENS = 750


@pytest.fixture(scope="session")
def tiny_audio(fixtures_dir: Path) -> tuple[Path, Path]:
    return write_tiny_audio(fixtures_dir / "audio")


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory, tiny_audio: tuple[Path, Path]
) -> Iterator[LiveServer]:
    model, projector = tiny_audio
    store = Store(tmp_path_factory.mktemp("audio") / "models")
    add_model(store, "aud", model, f"PROJECTOR {projector}\nPARAMETER temperature 0\n")
    server = LiveServer(store, Scheduler(store, num_parallel=2, max_loaded=1, max_queue=16))
    yield server
    server.close()


def _chat(live: LiveServer, audio: list[bytes], text: str = "the a", **extra: Any) -> Any:
    messages = [{"role": "user", "content": text, "audio": [b64(a) for a in audio]}]
    body = {"model": "aud", "messages": messages, "options": GREEDY, "stream": False, **extra}
    return post(live, "/api/chat", body)


def test_show_says_audio(live: LiveServer) -> None:
    shown = post(live, "/api/show", {"model": "aud"}).json()
    assert "audio" in shown["capabilities"] and "vision" not in shown["capabilities"]
    assert shown["projector_info"]["clip.modalities"] == ["audio"]


def test_the_clip_reaches_the_model_and_counts_as_prompt_tokens(live: LiveServer) -> None:
    # The first answer unloads the model (keep_alive 0): the same clip again is then evaluated
    # afresh, not from the slot's cache, whose last prompt token is decoded alone, which on
    # some CPUs' kernels differs in the last bits and, on random weights, in later tokens.
    tone = _chat(live, [TONE], keep_alive=0).json()
    again, noise = (_chat(live, [a]).json() for a in (TONE, NOISE))
    text = _chat(live, []).json()
    assert tone["message"]["content"] == again["message"]["content"]
    assert tone["message"]["content"] != noise["message"]["content"]
    assert tone["message"]["content"] != text["message"]["content"]
    # The clip's 750 positions and libmtmd's <|audio_bos|> <|audio_eos|> around them (text in
    # this vocabulary, a few tokens each).
    extra = tone["prompt_eval_count"] - text["prompt_eval_count"]
    assert CLIP_TOKENS < extra < CLIP_TOKENS + 40, extra


def test_openai_input_audio_is_ollamas_audio(live: LiveServer, ai: Any) -> None:
    # Both answers from a freshly loaded model: the clip is not in a slot's cache (see above).
    assert post(live, "/api/generate", {"model": "aud", "keep_alive": 0}).status_code == 200
    ollama = _chat(live, [TONE], keep_alive=0).json()["message"]["content"]
    openai = (
        ai.chat.completions.create(
            model="aud",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "input_audio",
                            "input_audio": {"data": b64(TONE), "format": "wav"},
                        },
                        {"type": "text", "text": "the a"},
                    ],
                }
            ],
            temperature=0,
            max_tokens=8,
            seed=1,
            frequency_penalty=0,
            presence_penalty=0,
            extra_body={"repeat_penalty": 1.0},
        )
        .choices[0]
        .message.content
    )
    assert openai == ollama and ollama


def test_a_continued_conversation_does_not_decode_the_clip_again(live: LiveServer) -> None:
    first = _chat(live, [NOISE], text="hello").json()
    follow = [
        {"role": "user", "content": "hello", "audio": [b64(NOISE)]},
        {"role": "assistant", "content": first["message"]["content"]},
        {"role": "user", "content": "the a"},
    ]
    body = {"model": "aud", "messages": follow, "options": GREEDY, "stream": False}
    again = post(live, "/api/chat", body).json()
    assert again["prompt_cache_count"] >= first["prompt_eval_count"]


def test_audio_over_the_bounds_or_not_audio_is_a_400(
    live: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCALRUN_MAX_AUDIO_SECONDS", str(MAX_SECONDS))
    # A runner started now reads the bound too.
    assert post(live, "/api/generate", {"model": "aud", "keep_alive": 0}).status_code == 200
    long = _chat(live, [clip(MAX_SECONDS + 1)])
    assert long.status_code == 400
    assert f"is {MAX_SECONDS + 1}.0 s of audio, more than the {MAX_SECONDS} s" in long.text
    # A header that claims one second over a longer clip is read as one second by libmtmd too.
    lying = bytearray(clip(MAX_SECONDS + 2))
    size_at = lying.index(b"data") + 4
    lying[size_at : size_at + 4] = (16000 * 2).to_bytes(4, "little")
    assert media.audio_seconds(bytes(lying)) == 1.0
    answers = [_chat(live, [a]).json()["message"]["content"] for a in (lying, clip(1), clip(2))]
    assert answers[0] == answers[1] != answers[2]  # the first second, as the header said
    garbage = _chat(live, [b"RIFF\0\0\0\0WAVEnot really"])
    assert garbage.status_code == 400
    assert "messages[0].audio[0] is not a readable WAV file" in garbage.json()["error"]
    picture = _chat(live, [b"\x89PNG\r\n\x1a\n"])
    assert picture.status_code == 400 and "is not audio" in picture.json()["error"]


def test_run_takes_audio_from_a_file(
    cli: Any, tmp_path: Path, tiny_audio: tuple[Path, Path]
) -> None:
    model, projector = tiny_audio
    (tmp_path / "Modelfile").write_text(
        f"FROM {model}\nPROJECTOR {projector}\nPARAMETER temperature 0\n"
        "PARAMETER num_predict 8\nPARAMETER repeat_penalty 1.0\n"
    )
    assert cli("create", "aud", "-f", "Modelfile").code == 0
    tone, noise = tmp_path / "tone.wav", tmp_path / "noise.wav"
    tone.write_bytes(TONE)
    noise.write_bytes(NOISE)
    answer = cli("run", "aud", "the a", "--audio", str(tone))
    assert answer.code == 0, answer.stderr
    assert cli("run", "aud", "the a", "--audio", str(tone)).stdout == answer.stdout
    assert cli("run", "aud", "the a", "--audio", str(noise)).stdout != answer.stdout
    assert_one_line_error(
        cli("run", "aud", "the a", "--audio", "Modelfile"), "Modelfile is not audio"
    )
    assert_one_line_error(cli("run", "aud", "the a", "--image", str(tone)), "is not an image")
