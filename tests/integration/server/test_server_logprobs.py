"""Log-probabilities through the real server (llama.cpp on SmolLM2) and the official clients.

Greedy decoding picks the likeliest token, so each token's logprob must equal the first of its
alternatives; the tokens must spell the text the client got, also when a stop string cuts it.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest
from benchlib.scores import continuation_logprob, in_child
from examplelib import node as node_packages

from localrun.scheduler import Scheduler
from localrun.sources import obtain
from localrun.store import reference
from localrun.store.local import Store

from support import PATIENCE_S
from support.server import SMOL, LiveServer

pytestmark = [pytest.mark.server, pytest.mark.model]

ASK: Any = [{"role": "user", "content": "Name three colours."}]
# An answer that stops before its budget (the stream helpers refuse one cut by its length).
SHORT: Any = [{"role": "user", "content": "What is the capital of France? One word."}]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    store = Store(tmp_path_factory.mktemp("logprobs") / "models")
    obtain.find(store, reference.parse(SMOL))
    server = LiveServer(store, Scheduler(store, num_parallel=2, max_loaded=1, max_queue=16))
    yield server
    server.close()


def check_greedy(entries: list[Any], text: str, top: int) -> None:
    """The entries spell `text`; each is the likeliest of its alternatives (greedy)."""
    assert entries and "".join(e.token for e in entries) == text
    for e in entries:
        assert e.logprob <= 0
        raw = getattr(e, "bytes", None)  # Ollama's client does not keep the bytes
        assert raw is None or bytes(raw).decode("utf-8", "replace") == e.token
        assert len(e.top_logprobs) == top
        probs = [t.logprob for t in e.top_logprobs]
        assert probs == sorted(probs, reverse=True)
        assert e.top_logprobs[0].token == e.token
        assert math.isclose(e.top_logprobs[0].logprob, e.logprob, abs_tol=1e-4)


def test_chat_logprobs(ai: openai.OpenAI) -> None:
    reply = ai.chat.completions.create(
        model=SMOL, messages=ASK, temperature=0, max_tokens=12, logprobs=True, top_logprobs=3
    )
    choice = reply.choices[0]
    assert choice.logprobs and choice.logprobs.content
    check_greedy(choice.logprobs.content, choice.message.content or "", 3)

    chunks = list(
        ai.chat.completions.create(
            model=SMOL, messages=ASK, temperature=0, max_tokens=12, logprobs=True,
            top_logprobs=2, stream=True,
        )
    )  # fmt: skip
    entries = [e for c in chunks if c.choices for e in (c.choices[0].logprobs or _none()).content]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    check_greedy(entries, text, 2)

    plain = ai.chat.completions.create(model=SMOL, messages=ASK, temperature=0, max_tokens=4)
    assert plain.choices[0].logprobs is None


class _none:
    content: tuple[Any, ...] = ()


def sse_chunks(live: LiveServer, body: dict[str, Any]) -> list[dict[str, Any]]:
    answer = httpx.post(f"{live.url}/v1/chat/completions", json=body, timeout=PATIENCE_S)
    events = [x.removeprefix("data: ") for x in answer.text.split("\n\n") if x.strip()]
    assert events[-1] == "[DONE]"
    return [json.loads(x) for x in events[:-1]]


def test_every_streamed_choice_opens_with_its_role(live: LiveServer, ai: openai.OpenAI) -> None:
    """As OpenAI's stream opens a choice: a chunk of the role alone (logprobs null), then the
    tokens, each token's entry once. The stream helpers gather what the answer whole says."""
    body = {"model": SMOL, "messages": ASK, "temperature": 0, "max_tokens": 8, "n": 2,
            "logprobs": True, "top_logprobs": 1, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    chunks = sse_chunks(live, body)
    choices = [(c["choices"][0] if c["choices"] else None) for c in chunks]
    opening = {"role": "assistant", "content": "", "refusal": None}
    for index in (0, 1):
        mine = [c for c in choices if c and c["index"] == index]
        assert mine[0] == {"index": index, "delta": opening, "logprobs": None,
                           "finish_reason": None}  # fmt: skip
        assert all("role" not in c["delta"] for c in mine[1:])
        tokens = [e["token"] for c in mine if c["logprobs"] for e in c["logprobs"]["content"]]
        assert "".join(tokens) == "".join(c["delta"].get("content", "") for c in mine)
        assert mine[-1]["finish_reason"] == "length"
    assert all(c["usage"] is None for c in chunks[:-1]) and chunks[-1]["usage"]

    # openai-python's stream helper gathers the answer the stream told, each entry once.
    whole = ai.chat.completions.create(
        model=SMOL, messages=SHORT, temperature=0, max_tokens=40, logprobs=True, top_logprobs=1
    ).choices[0]
    assert whole.finish_reason == "stop" and whole.logprobs and whole.logprobs.content
    with ai.chat.completions.stream(
        model=SMOL, messages=SHORT, temperature=0, max_tokens=40, logprobs=True, top_logprobs=1
    ) as stream:
        final = stream.get_final_completion().choices[0]
    assert final.message.content == whole.message.content
    assert final.logprobs and final.logprobs.content == whole.logprobs.content


@pytest.fixture(scope="module")
def openai_node(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with openai-node (OPENAI_NODE, pinned) installed from npm's registry; skipped
    where node, npm or the registry is missing."""
    folder = tmp_path_factory.mktemp("openai-node")
    try:
        node_packages.install((OPENAI_NODE,), folder)
    except node_packages.NodeUnavailable as exc:
        pytest.skip(f"openai-node: {exc}")
    return folder


def test_openai_nodes_final_completion_lists_each_token_once(
    live: LiveServer, ai: openai.OpenAI, openai_node: Path
) -> None:
    """openai-node's ChatCompletionStream takes a first chunk's logprobs object for its own
    snapshot and appends the next chunks' to it: a first token carried in it was listed twice
    in finalChatCompletion()."""
    node = shutil.which("node")
    assert node is not None
    whole = ai.chat.completions.create(
        model=SMOL, messages=SHORT, temperature=0, max_tokens=40, logprobs=True, top_logprobs=1
    ).choices[0]
    assert whole.logprobs and whole.logprobs.content
    script = NODE_FINAL % json.dumps({"baseURL": f"{live.url}/v1", "model": SMOL, "ask": SHORT})
    ran = subprocess.run(
        [node, "--input-type=commonjs", "-e", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=openai_node,
    )
    assert ran.returncode == 0, ran.stderr
    told = json.loads(ran.stdout)
    assert told["content"] == whole.message.content
    assert told["tokens"] == [e.token for e in whole.logprobs.content]


OPENAI_NODE = "openai@6.49.0"  # the release whose stream helper listed the first token twice

# openai-node's ChatCompletionStream, as its examples use it: finalChatCompletion() gathers the
# chunks (a first chunk's logprobs object becomes the snapshot's, so its entries were listed
# twice when the first token came in it).
NODE_FINAL = """
const OpenAI = require("openai");
const p = %s;
(async () => {
  const client = new OpenAI({baseURL: p.baseURL, apiKey: "unused", maxRetries: 0});
  const stream = client.chat.completions.stream({model: p.model, messages: p.ask,
    temperature: 0, max_tokens: 40, logprobs: true, top_logprobs: 1});
  const done = (await stream.finalChatCompletion()).choices[0];
  console.log(JSON.stringify({content: done.message.content,
    tokens: done.logprobs.content.map((e) => e.token)}));
})().catch((e) => { console.error(e); process.exit(1); });
"""


def test_a_stop_string_drops_the_entries_past_it(ai: openai.OpenAI) -> None:
    full = ai.chat.completions.create(model=SMOL, messages=ASK, temperature=0, max_tokens=12)
    words = (full.choices[0].message.content or "").split()
    assert len(words) >= 3
    cut = ai.chat.completions.create(
        model=SMOL, messages=ASK, temperature=0, max_tokens=12, stop=[words[2]],
        logprobs=True, top_logprobs=1,
    )  # fmt: skip
    text = cut.choices[0].message.content or ""
    assert words[2] not in text
    content = cut.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None
    # The entries cover the text sent, the last one maybe only in part (where the stop began),
    # and none lies past it.
    spelled = "".join(e.token for e in content)
    assert spelled.startswith(text) and len(spelled) - len(content[-1].token) < len(text)


def test_completion_logprobs(ai: openai.OpenAI) -> None:
    prompt = "The capital of France is"
    done = ai.completions.create(model=SMOL, prompt=prompt, max_tokens=5, temperature=0, logprobs=2)
    lp = done.choices[0].logprobs
    assert lp and lp.tokens and "".join(lp.tokens) == done.choices[0].text
    assert lp.token_logprobs and all(x <= 0 for x in lp.token_logprobs)
    assert lp.top_logprobs and all(len(alts) == 2 for alts in lp.top_logprobs)
    assert lp.text_offset and lp.text_offset[0] == len(prompt)
    streamed = list(
        ai.completions.create(
            model=SMOL, prompt=prompt, max_tokens=5, temperature=0, logprobs=2, stream=True
        )
    )
    tokens = [t for c in streamed for t in (c.choices[0].logprobs.tokens or [])]  # type: ignore[union-attr]
    assert tokens == lp.tokens


def test_ollama_logprobs(live: LiveServer) -> None:
    oc = ollama.Client(host=live.url, timeout=PATIENCE_S)
    options = {"temperature": 0, "num_predict": 8}
    answer = oc.chat(SMOL, ASK, options=options, logprobs=True, top_logprobs=2)
    assert answer.logprobs
    check_greedy(answer.logprobs, answer.message.content or "", 2)
    parts = list(oc.generate(SMOL, "Hello", options=options, logprobs=True, stream=True))
    entries = [e for p in parts for e in p.logprobs or []]
    assert "".join(e.token for e in entries) == "".join(p.response for p in parts)
    assert all(not e.top_logprobs for e in entries)
    plain = oc.chat(SMOL, ASK, options=options)
    assert not plain.logprobs


LOGPROBS: Any = ["message.output_text.logprobs"]


def test_responses_logprobs(ai: openai.OpenAI) -> None:
    """The Responses API's: asked for with `include`, in the message's part and in every
    output_text.delta (the same entries chat's give), and [] without the include."""
    ask: Any = {"model": SMOL, "input": ASK, "temperature": 0, "max_output_tokens": 12}
    chat = ai.chat.completions.create(
        model=SMOL, messages=ASK, temperature=0, max_tokens=12, logprobs=True, top_logprobs=3
    )
    answer = ai.responses.create(**ask, include=LOGPROBS, top_logprobs=3)
    part = answer.output[0].content[0]
    assert part.type == "output_text" and part.logprobs
    check_greedy(part.logprobs, answer.output_text, 3)
    assert chat.choices[0].logprobs and chat.choices[0].logprobs.content
    assert [(e.token, e.logprob) for e in part.logprobs] == [
        (e.token, e.logprob) for e in chat.choices[0].logprobs.content
    ]

    deltas, done = [], None
    with ai.responses.stream(**ask, include=LOGPROBS, top_logprobs=2) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                assert event.logprobs and "".join(e.token for e in event.logprobs) == event.delta
                deltas += event.logprobs
            elif event.type == "response.output_text.done":
                done = event
    assert "".join(e.token for e in deltas) == answer.output_text
    assert all(len(e.top_logprobs or []) == 2 for e in deltas)
    assert done is not None and [e.token for e in done.logprobs] == [e.token for e in deltas]

    plain = ai.responses.create(**ask)
    assert plain.output[0].content[0].logprobs == []
    for event in ai.responses.create(**ask, stream=True):
        assert getattr(event, "logprobs", None) in (None, [])


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"messages": ASK, "logprobs": True, "top_logprobs": 21}),
        ("/v1/chat/completions", {"messages": ASK, "top_logprobs": 2}),
        ("/v1/completions", {"prompt": "x", "logprobs": 6}),
        ("/v1/completions", {"prompt": "x", "logprobs": True}),
        ("/api/chat", {"messages": ASK, "logprobs": True, "top_logprobs": -1}),
        ("/v1/responses", {"input": "x", "include": LOGPROBS, "top_logprobs": 21}),
        ("/v1/responses", {"input": "x", "include": [7]}),
    ],
)
def test_bad_logprobs_are_400(live: LiveServer, path: str, body: dict[str, Any]) -> None:
    answer = httpx.post(f"{live.url}{path}", json={"model": SMOL, **body}, timeout=PATIENCE_S)
    assert answer.status_code == 400, answer.text


# -- a prompt's own log-probabilities (echo, prompt_logprobs) and the tokenizer's routes ------

QUESTION = "Question: which animal barks? Answer:"


@pytest.fixture
def oracle(smollm2_path: str) -> Callable[[list[list[int]]], list[Any]]:
    """llama.cpp's own log-probabilities and ranks of prompts, read in a child with the test's
    environment, as the server's runner reads them."""
    return lambda prompts: in_child(smollm2_path, prompts)


def ids_of(live: LiveServer, text: str) -> list[int]:
    """The text's tokens, as lm-evaluation-harness's remote tokenizer asks for them."""
    body = {"prompt": text, "add_special_tokens": False}
    answer = httpx.post(f"{live.url}/tokenize", json=body, timeout=PATIENCE_S)
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert data["count"] == len(data["tokens"])
    return data["tokens"]  # type: ignore[no-any-return]


def test_echo_gives_the_prompts_tokens_and_their_logprobs(
    ai: openai.OpenAI, live: LiveServer, oracle: Callable[[list[list[int]]], list[Any]]
) -> None:
    """The openai client's echo with max_tokens 0: the prompt alone, each token with llama.cpp's
    own log-probability of it and its alternatives (the token itself among them)."""
    done = ai.completions.create(model=SMOL, prompt=QUESTION, echo=True, logprobs=2, max_tokens=0)
    choice = done.choices[0]
    lp = choice.logprobs
    assert choice.text == QUESTION and choice.finish_reason == "length" and lp is not None
    assert lp.tokens and "".join(lp.tokens) == QUESTION
    assert lp.token_logprobs and lp.top_logprobs and lp.text_offset
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    expected_all = oracle([ids_of(live, QUESTION)])[0][0]
    assert len(expected_all) == len(lp.tokens)
    for token, got, alternatives, expected in zip(
        lp.tokens[1:], lp.token_logprobs[1:], lp.top_logprobs[1:], expected_all[1:], strict=True
    ):
        assert expected is not None and math.isclose(got, expected, abs_tol=1e-4)
        assert 2 <= len(alternatives) <= 3 and alternatives[token] == got
        assert max(alternatives.values()) >= got
    assert done.usage and done.usage.prompt_tokens == len(lp.tokens)

    prompt = "The capital of France is"
    more = ai.completions.create(
        model=SMOL, prompt=prompt, echo=True, logprobs=1, max_tokens=3, temperature=0
    )
    extra = more.choices[0].logprobs
    assert extra and extra.tokens and extra.text_offset and extra.token_logprobs
    answer = more.choices[0].text
    read = len(ids_of(live, prompt))
    assert more.usage and more.usage.completion_tokens == 3
    assert answer.startswith(prompt) and len(extra.tokens) == read + 3
    assert "".join(extra.tokens) == answer and extra.text_offset[read] == len(prompt)
    assert extra.token_logprobs[0] is None and None not in extra.token_logprobs[1:]
    plain = ai.completions.create(model=SMOL, prompt=QUESTION, echo=True, max_tokens=2)
    assert plain.choices[0].text.startswith(QUESTION) and plain.choices[0].logprobs is None
    # Streamed: the prompt and its entries come first, then the answer's, the same as whole.
    chunks = list(ai.completions.create(
        model=SMOL, prompt=prompt, echo=True, logprobs=1, max_tokens=3, temperature=0, stream=True
    ))  # fmt: skip
    assert "".join(c.choices[0].text for c in chunks if c.choices) == answer
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs
                for t in c.choices[0].logprobs.token_logprobs or []]  # fmt: skip
    assert streamed[0] is None and len(streamed) == len(extra.token_logprobs)
    for got, whole in zip(streamed[1:], extra.token_logprobs[1:], strict=True):
        assert got is not None and whole is not None and math.isclose(got, whole, abs_tol=1e-4)


def test_lm_eval_harness_loglikelihood_request(
    live: LiveServer, oracle: Callable[[list[list[int]]], list[Any]]
) -> None:
    """lm-evaluation-harness's local-completions loglikelihood request (a batch of token-id
    prompts, max_tokens 1, echo) read as its parse_logprobs reads it: each continuation's
    log-likelihood is llama.cpp's own, and greedy where llama.cpp's likeliest tokens are it."""
    context = ids_of(live, QUESTION)
    options = [ids_of(live, QUESTION + word)[len(context) :] for word in (" The dog", " A fish")]
    prompts = [context + tail for tail in options]
    body = {
        "model": SMOL, "prompt": prompts, "temperature": 0, "max_tokens": 1, "logprobs": 1,
        "seed": 1234, "echo": True,
    }  # fmt: skip
    answer = httpx.post(f"{live.url}/v1/completions", json=body, timeout=PATIENCE_S)
    assert answer.status_code == 200, answer.text
    choices = sorted(answer.json()["choices"], key=lambda c: c["index"])
    assert [c["index"] for c in choices] == [0, 1]
    for choice, ids, (scores_of, ranks) in zip(choices, prompts, oracle(prompts), strict=True):
        logprobs = choice["logprobs"]
        assert len(logprobs["token_logprobs"]) == len(ids) + 1  # the prompt, then one token
        scores = logprobs["token_logprobs"][len(context) : -1]
        tops = logprobs["top_logprobs"][len(context) : -1]
        greedy = all(s == max(t.values()) for s, t in zip(scores, tops, strict=True))
        expected = continuation_logprob(scores_of, len(context))
        assert math.isclose(sum(scores), expected, abs_tol=1e-4)
        assert greedy == all(rank == 1 for rank in ranks[len(context) :])
        detokenized = httpx.post(f"{live.url}/detokenize", json={"tokens": ids}, timeout=PATIENCE_S)
        assert choice["text"].startswith(detokenized.json()["prompt"])


def test_prompt_logprobs_in_vllms_shape(live: LiveServer, ai: openai.OpenAI) -> None:
    body = {"model": SMOL, "prompt": QUESTION, "max_tokens": 1, "prompt_logprobs": 2}
    answer = httpx.post(f"{live.url}/v1/completions", json=body, timeout=PATIENCE_S).json()
    scored = answer["choices"][0]["prompt_logprobs"]
    ids = ids_of(live, QUESTION)
    assert scored[0] is None and len(scored) == len(ids)
    for entry, token in zip(scored[1:], ids[1:], strict=True):
        mine = entry[str(token)]
        assert set(mine) == {"logprob", "rank", "decoded_token"} and mine["rank"] >= 1
        assert 2 <= len(entry) <= 3 and sorted(e["rank"] for e in entry.values())[0] == 1
    assert answer["choices"][0]["logprobs"] is None  # not asked for
    chat = httpx.post(
        f"{live.url}/v1/chat/completions",
        json={"model": SMOL, "messages": ASK, "max_tokens": 1, "prompt_logprobs": 0},
        timeout=PATIENCE_S,
    ).json()
    assert chat["prompt_logprobs"][0] is None and len(chat["prompt_logprobs"]) > 5
    assert all(len(entry) == 1 for entry in chat["prompt_logprobs"][1:])
    with pytest.raises(openai.BadRequestError, match="not available when `stream=True`"):
        ai.chat.completions.create(
            model=SMOL, messages=ASK, stream=True, extra_body={"prompt_logprobs": 1}
        )


def test_the_tokenizers_routes_in_vllms_shapes(live: LiveServer) -> None:
    """What lm-evaluation-harness's remote tokenizer reads: /tokenizer_info's eos_token,
    /tokenize's tokens (special tokens' texts read as themselves), /detokenize's prompt;
    llama-server's shapes alongside."""
    info = httpx.get(f"{live.url}/tokenizer_info", params={"model": SMOL}, timeout=PATIENCE_S)
    assert info.status_code == 200, info.text
    eos = info.json()["eos_token"]
    assert eos == "<|im_end|>" and "<|im_start|>" in info.json()["chat_template"]
    assert len(ids_of(live, eos)) == 1
    ids = ids_of(live, "Hello world")
    back = httpx.post(f"{live.url}/detokenize", json={"tokens": ids}, timeout=PATIENCE_S).json()
    assert back == {"prompt": "Hello world", "content": "Hello world"}
    llama = httpx.post(f"{live.url}/tokenize", json={"content": "Hello world"}, timeout=PATIENCE_S)
    assert llama.json() == {"tokens": ids}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"prompt": [49152]}, "not in the model's vocabulary"),
        ({"prompt": [[1, 2], [10**9]]}, "not in the model's vocabulary"),
        ({"prompt": []}, "prompt must be"),
        ({"prompt": [[]]}, "is empty"),
        ({"prompt": [1, "a"]}, "prompt must be"),
        ({"prompt": [[1]] * 65}, "at most 64"),
        ({"prompt": "x", "max_tokens": 0}, "at least 1"),
        ({"prompt": "x", "echo": True, "suffix": "y"}, "echo and suffix"),
        ({"prompt": "x", "prompt_logprobs": 21}, "prompt_logprobs"),
        ({"prompt": "x", "prompt_logprobs": 1, "stream": True}, "stream=True"),
        ({"messages": ASK, "echo": True}, "echo"),
    ],
)
def test_prompt_scoring_refusals(live: LiveServer, body: dict[str, Any], fragment: str) -> None:
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    answer = httpx.post(f"{live.url}{path}", json={"model": SMOL, **body}, timeout=PATIENCE_S)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert fragment in error["message"] and "\n" not in error["message"]


def test_a_prompt_is_scored_once_for_all_its_choices(live: LiveServer) -> None:
    """n choices of one prompt, echoed with logprobs (vLLM's rule: the prompt scored): every
    choice shows the entries its prompt's first choice scored, whole and streamed (a choice
    whose answer comes before those entries waits for them)."""
    prompts = ["The capital of France is", "Once upon a time"]
    body = {"model": SMOL, "prompt": prompts, "n": 3, "echo": True, "logprobs": 2,
            "max_tokens": 2, "temperature": 0.8, "seed": 7}  # fmt: skip
    whole = httpx.post(f"{live.url}/v1/completions", json=body, timeout=PATIENCE_S)
    assert whole.status_code == 200, whole.text
    choices = sorted(whole.json()["choices"], key=lambda c: c["index"])
    streamed: dict[int, list[Any]] = {}
    with httpx.stream("POST", f"{live.url}/v1/completions", json={**body, "stream": True},
                      timeout=PATIENCE_S) as answer:  # fmt: skip
        for line in answer.iter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:])["choices"]:
                    if choice.get("logprobs"):
                        streamed.setdefault(choice["index"], []).append(choice["logprobs"])
    for p, prompt in enumerate(prompts):
        read = len(ids_of(live, prompt))
        group = choices[p * 3 : p * 3 + 3]
        first = group[0]["logprobs"]
        for choice in group:
            echoed = choice["logprobs"]
            assert echoed["tokens"][:read] == first["tokens"][:read]
            assert echoed["token_logprobs"][:read] == first["token_logprobs"][:read]
            shown = streamed[choice["index"]][0]  # the first chunk carries the prompt's
            assert shown["tokens"][:read] == first["tokens"][:read]
            assert [
                round(x, 4) if x is not None else None for x in shown["token_logprobs"][:read]
            ] == [round(x, 4) if x is not None else None for x in first["token_logprobs"][:read]]
            assert "".join(shown["tokens"][:read]) == prompt


def test_a_requests_scoring_is_bounded(live: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """LOCALRUN_MAX_PROMPT_LOGPROBS: a prompt, or a request's prompts together, scored past it
    is a 400 before any is scored; within it, the answer as before."""
    read = len(ids_of(live, QUESTION))
    monkeypatch.setenv("LOCALRUN_MAX_PROMPT_LOGPROBS", str((read + 1) * 3))  # 2 alternatives

    def ask(**fields: Any) -> httpx.Response:
        return httpx.post(f"{live.url}/v1/completions", json={
            "model": SMOL, "max_tokens": 1, **fields}, timeout=PATIENCE_S)  # fmt: skip

    assert ask(prompt=QUESTION, prompt_logprobs=2).status_code == 200
    ids = ids_of(live, QUESTION)
    for fields in ({"prompt": QUESTION, "prompt_logprobs": 4},
                   {"prompt": [QUESTION] * 3, "prompt_logprobs": 2},
                   {"prompt": [ids] * 3, "echo": True, "logprobs": 2}):  # fmt: skip
        refused = ask(**fields)
        assert refused.status_code == 400, refused.text
        assert "LOCALRUN_MAX_PROMPT_LOGPROBS" in refused.json()["error"]["message"]
    chat = httpx.post(f"{live.url}/v1/chat/completions", json={
        "model": SMOL, "messages": ASK, "max_tokens": 1, "prompt_logprobs": 20},
        timeout=PATIENCE_S)  # fmt: skip
    assert chat.status_code == 400 and "LOCALRUN_MAX_PROMPT_LOGPROBS" in chat.text


def test_the_token_that_ends_the_answer_has_its_entry(live: LiveServer) -> None:
    """lm-evaluation-harness sums token_logprobs[ctxlen:-1], the echo being the prompt and one
    token (issue 92: where the next token ended the answer, localrun sent the prompt's entries
    alone and the harness cut the continuation's last token). As OpenAI's legacy completions
    and vLLM: the end's entry is there, its text empty, counted as a completion token."""
    ids = ids_of(live, QUESTION)
    end = httpx.get(f"{live.url}/tokenizer_info", params={"model": SMOL}, timeout=PATIENCE_S)
    eos = ids_of(live, end.json()["eos_token"])
    assert len(eos) == 1
    body = {"model": SMOL, "prompt": [ids], "echo": True, "logprobs": 1, "max_tokens": 1,
            "temperature": 0, "logit_bias": {str(eos[0]): 100}}  # fmt: skip
    answer = httpx.post(f"{live.url}/v1/completions", json=body, timeout=PATIENCE_S).json()
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "stop" and answer["usage"]["completion_tokens"] == 1
    logprobs = choice["logprobs"]
    assert len(logprobs["token_logprobs"]) == len(ids) + 1  # the prompt, then the end
    assert logprobs["tokens"][-1] == "" and choice["text"] == QUESTION
    assert logprobs["token_logprobs"][-1] < 0  # the model's own (raw: before the bias)
    # Without logprobs (nothing to say of it) the answer is as before: no token, no text.
    plain = httpx.post(f"{live.url}/v1/completions", timeout=PATIENCE_S, json={
        **body, "logprobs": None, "echo": False}).json()  # fmt: skip
    assert plain["choices"][0]["text"] == "" and plain["usage"]["completion_tokens"] == 0


def test_the_tokenizer_routes_need_no_model_named_or_loaded(tmp_path: Path) -> None:
    """lm-evaluation-harness's remote tokenizer asks /tokenizer_info and /tokenize before any
    completion, naming no model (issue 92: a 400, and the harness fell back to the hub): the
    store's only model answers, loaded on demand; a model named by ?model= too."""
    store = Store(tmp_path / "models")
    obtain.find(store, reference.parse(SMOL))
    server = LiveServer(store, Scheduler(store, num_parallel=1, max_loaded=1, max_queue=4))
    try:
        info = httpx.get(f"{server.url}/tokenizer_info", timeout=PATIENCE_S)
        assert info.status_code == 200 and info.json()["eos_token"] == "<|im_end|>", info.text
        tokens = httpx.post(f"{server.url}/tokenize", timeout=PATIENCE_S,
                            json={"prompt": "test", "add_special_tokens": False})  # fmt: skip
        assert tokens.status_code == 200 and tokens.json()["tokens"], tokens.text
        back = httpx.post(f"{server.url}/detokenize", json={"tokens": tokens.json()["tokens"]},
                          timeout=PATIENCE_S)  # fmt: skip
        assert back.json()["prompt"] == "test"
        named = httpx.get(f"{server.url}/tokenizer_info", params={"model": SMOL},
                          timeout=PATIENCE_S)  # fmt: skip
        assert named.json() == info.json()
    finally:
        server.close()
