"""Images through every dialect, on a tiny random-weight vision model and its projector run by
the real llama.cpp (libmtmd) in the real server, with the official clients."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from testmodels.text import write_tiny_model

from localrun.errors import InvalidGGUFError
from localrun.recipes import create, modelfile
from localrun.request import media
from localrun.store import names
from localrun.store.local import Store

from support import PATIENCE_S
from support.media import BLUE, GREEDY, RED, b64, data_url
from support.server import LiveServer, post, vision_server

pytestmark = [pytest.mark.server, pytest.mark.model]


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory, tiny_vision: tuple[Path, Path], tiny_model: Path
) -> Iterator[LiveServer]:
    server = vision_server(tmp_path_factory.mktemp("vision"), tiny_vision, tiny_model)
    yield server
    server.close()


def test_show_lists_the_projector_and_says_vision(live: LiveServer) -> None:
    shown = post(live, "/api/show", {"model": "vis"}).json()
    assert "vision" in shown["capabilities"] and "audio" not in shown["capabilities"]
    assert shown["projector_info"]["clip.projection_dim"] == 64
    assert "PROJECTOR " in shown["modelfile"]
    plain = post(live, "/api/show", {"model": "tiny"}).json()
    assert "vision" not in plain["capabilities"]


def test_the_image_reaches_the_model_and_counts_as_prompt_tokens(oc: Any) -> None:
    def ask(image: bytes) -> Any:
        return oc.generate(model="vis", prompt="the a", images=[image], options=GREEDY)

    red, again, blue = ask(RED), ask(RED), ask(BLUE)
    text = oc.generate(model="vis", prompt="the a", options=GREEDY)
    assert red.response == again.response  # the same answer every time
    assert red.response != blue.response  # a different picture, a different answer
    assert red.response != text.response
    # 16 image positions (32x32 in 8x8 patches) on top of the text's: raw prompts, so that the
    # text around the image is tokenized alike.
    raw = [
        oc.generate(model="vis", prompt=" the a", raw=True, options=GREEDY, images=images)
        for images in ([RED], [])
    ]
    assert raw[0].prompt_eval_count == raw[1].prompt_eval_count + 16


def test_every_dialect_takes_the_same_image(oc: Any, ai: Any, ant: Any) -> None:
    ollama_chat = oc.chat(
        model="vis",
        messages=[{"role": "user", "content": "the a", "images": [RED]}],
        options=GREEDY,
    ).message.content
    openai_chat = (
        ai.chat.completions.create(
            model="vis",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": data_url(RED)}},
                        {"type": "text", "text": "the a"},
                    ],
                }
            ],
            temperature=0,
            max_tokens=8,
            seed=1,
        )
        .choices[0]
        .message.content
    )
    anthropic_chat = (
        ant.messages.create(
            model="vis",
            max_tokens=8,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {
                                "type": "base64",
                                "media_type": "image/png",
                                "data": b64(RED),
                            },
                        },
                        {"type": "text", "text": "the a"},
                    ],
                }
            ],
        )
        .content[0]
        .text
    )
    responses = ai.responses.create(
        model="vis",
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_image", "image_url": f"data:image/png;base64,{b64(RED)}"},
                    {"type": "input_text", "text": "the a"},
                ],
            }
        ],
        temperature=0,
        max_output_tokens=8,
    ).output_text
    # The image before the text in each: one prompt, one greedy answer.
    assert ollama_chat == openai_chat == anthropic_chat == responses
    assert ollama_chat


def test_two_streams_with_different_images_at_once(live: LiveServer) -> None:
    answers: dict[str, str] = {}

    def stream(name: str, image: bytes) -> None:
        body = {"model": "vis", "prompt": "the a", "images": [b64(image)], "options": GREEDY}
        with httpx.stream(
            "POST", f"{live.url}/api/generate", json=body, timeout=PATIENCE_S
        ) as response:
            answers[name] = "".join(
                json.loads(line).get("response", "") for line in response.iter_lines() if line
            )

    alone = {
        name: post(
            live,
            "/api/generate",
            {"model": "vis", "prompt": "the a", "images": [b64(image)], "options": GREEDY,
             "stream": False},
        ).json()["response"]
        for name, image in (("red", RED), ("blue", BLUE))
    }  # fmt: skip
    pairs = (("red", RED), ("blue", BLUE))
    threads = [threading.Thread(target=stream, args=pair) for pair in pairs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(PATIENCE_S)
    assert answers == alone


def test_a_continued_conversation_does_not_encode_the_image_again(live: LiveServer) -> None:
    first = [{"role": "user", "content": "the a", "images": [b64(BLUE)]}]
    body = {"model": "vis", "options": GREEDY, "stream": False}
    answer = post(live, "/api/chat", {**body, "messages": first}).json()
    follow = [*first, {"role": "assistant", "content": answer["message"]["content"]},
              {"role": "user", "content": "hello"}]  # fmt: skip
    again = post(live, "/api/chat", {**body, "messages": follow}).json()
    # The image and the first turn stay in the slot: only what is new is evaluated.
    assert again["prompt_cache_count"] >= answer["prompt_eval_count"]


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"model": "tiny", "prompt": "hi", "images": [b64(RED)]}, 400, "no projector"),
        ({"model": "vis", "prompt": "hi", "images": [b64(b"not a picture")]}, 400, "images[0]"),
        ({"model": "vis", "prompt": f"hi {media.MARKER}"}, 400, "keeps for where an image"),
        ({"model": "vis", "prompt": "hi", "images": ["%%%"]}, 400, "not valid base64"),
    ],
)
def test_bad_images_are_400s_that_say_why(
    live: LiveServer, body: dict[str, Any], status: int, fragment: str
) -> None:
    answer = post(live, "/api/generate", {**body, "stream": False})
    assert answer.status_code == status, answer.text
    assert fragment in answer.json()["error"]


def test_an_image_url_and_a_bomb_are_refused_in_openais_shape(live: LiveServer) -> None:
    def ask(url: str) -> httpx.Response:
        part = {"type": "image_url", "image_url": {"url": url}}
        body = {"model": "vis", "messages": [{"role": "user", "content": [part]}]}
        return post(live, "/v1/chat/completions", body)

    fetched = ask("https://example.com/cat.png")
    assert fetched.status_code == 400
    assert "fetches nothing" in fetched.json()["error"]["message"]
    from support.media import bomb

    huge = ask(f"data:image/png;base64,{b64(bomb())}")
    assert huge.status_code == 400 and "pixels" in huge.json()["error"]["message"]


def test_create_refuses_a_projector_of_another_width(
    tmp_path: Path, tiny_vision: tuple[Path, Path], tiny_model: Path
) -> None:
    narrow = write_tiny_model(tmp_path / "narrow.gguf", n_embd=32)
    store = Store(tmp_path / "models")
    text = f"FROM {narrow}\nPROJECTOR {tiny_vision[1]}\n"
    with pytest.raises(InvalidGGUFError, match=r"makes embeddings 64 wide.*takes 32"):
        create.create(store, names.parse("x"), modelfile.parse(text), tmp_path)
    with pytest.raises(InvalidGGUFError, match="is a projector"):
        create.create(
            store, names.parse("y"), modelfile.parse(f"FROM {tiny_vision[1]}\n"), tmp_path
        )
    with pytest.raises(InvalidGGUFError, match="is not a projector"):
        create.create(
            store,
            names.parse("z"),
            modelfile.parse(f"FROM {tiny_model}\nPROJECTOR {tiny_model}\n"),
            tmp_path,
        )


def test_audio_to_a_projector_without_an_audio_encoder_is_a_400(live: LiveServer) -> None:
    from support.media import wav

    clip = b64(wav(0.5))
    part = {"type": "input_audio", "input_audio": {"data": clip, "format": "wav"}}
    openai = post(
        live,
        "/v1/chat/completions",
        {"model": "vis", "messages": [{"role": "user", "content": [part, "the a"]}]},
    )
    assert openai.status_code == 400
    assert "takes images, not audio" in openai.json()["error"]["message"]
    # localrun's `audio` beside Ollama's `images`, as `localrun run --audio` sends it.
    ollama = post(
        live,
        "/api/chat",
        {"model": "vis", "stream": False,
         "messages": [{"role": "user", "content": "the a", "audio": [clip]}]},
    )  # fmt: skip
    assert ollama.status_code == 400 and "takes images, not audio" in ollama.json()["error"]


def test_the_memory_plan_counts_the_projector(
    live: LiveServer, tiny_vision: tuple[Path, Path]
) -> None:
    from localrun.hardware import fit
    from localrun.model import stored as model_mod

    vis = model_mod.load(live.store, names.parse("vis"))
    plain = model_mod.load(live.store, names.parse("tiny"))
    with_projector = fit.plan_fit(vis, {"num_ctx": 256}).plan.ram_bytes
    without = fit.plan_fit(plain, {"num_ctx": 256}).plan.ram_bytes
    # The same text model (tiny-vision.gguf is the tiny llama): the projector's weights and a
    # quarter more for its compute buffers.
    assert with_projector - without == tiny_vision[1].stat().st_size * 5 // 4


def test_run_chat_and_batch_take_images_from_files(
    cli: Any, tmp_path: Path, tiny_vision: tuple[Path, Path]
) -> None:
    """`run --image`, a path in a chat message and a --batch line's `images` give the model the
    same picture: the same greedy answer."""
    import os
    import sys

    import pexpect

    from support.cli import assert_one_line_error

    model, projector = tiny_vision
    (tmp_path / "Modelfile").write_text(
        f"FROM {model}\nPROJECTOR {projector}\nPARAMETER temperature 0\nPARAMETER num_predict 8\n"
    )
    assert cli("create", "vis", "-f", "Modelfile").code == 0
    red, blue = tmp_path / "red picture.png", tmp_path / "blue.png"
    red.write_bytes(RED)
    blue.write_bytes(BLUE)
    answer = cli("run", "vis", "the a", "--image", str(red))
    assert answer.code == 0, answer.stderr
    assert cli("run", "vis", "the a", "--image", str(red)).stdout == answer.stdout
    assert cli("run", "vis", "the a", "--image", str(blue)).stdout != answer.stdout
    assert_one_line_error(cli("run", "vis", "the a", "--image", "nope.png"), "nope.png")
    assert_one_line_error(
        cli("run", "vis", "the a", "--image", "Modelfile"), "Modelfile is not an image"
    )

    lines = [
        {"id": "file", "prompt": "the a", "images": [str(red)]},
        {"id": "data", "prompt": "the a", "images": [b64(RED)]},
    ]
    batch = tmp_path / "batch.jsonl"
    batch.write_text("".join(json.dumps(line) + "\n" for line in lines))
    done = cli("run", "vis", "--batch", str(batch))
    assert done.code == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["response"] for r in records] == [answer.stdout.strip()] * 2

    env = {**os.environ, "TERM": "dumb", "PYTHONUNBUFFERED": "1"}
    chat = pexpect.spawn(sys.executable, ["-m", "localrun", "run", "vis"], env=env,
                         encoding="utf-8", timeout=PATIENCE_S, cwd=str(tmp_path))  # fmt: skip
    try:
        chat.expect_exact(">>> ")
        escaped = str(red).replace(" ", "\\ ")
        chat.sendline(f"{escaped} the a")
        chat.expect_exact(f"Added image '{red}'")
        chat.expect_exact(">>> ")
        assert answer.stdout.strip() in chat.before
        chat.sendline("/bye")
        chat.expect(pexpect.EOF)
    finally:
        chat.close(force=True)
