"""The runner and chat templates, over the scripted fake engine (the layers above llama.cpp)."""

from __future__ import annotations

from pathlib import Path

import pytest

from localrun.cli.run.local import LocalSession
from localrun.errors import InvalidParameterError, TemplateError
from localrun.formats import template
from localrun.model.stored import Model
from localrun.model.stored import load as load_model
from localrun.recipes import create, modelfile
from localrun.store import names
from localrun.store.local import Store
from localrun.worker.local import open_local


def _model(store: Store, folder: Path, text: str, name: str = "m") -> Model:
    mf = modelfile.parse(text)
    create.create(store, names.parse(name), mf, folder)
    return load_model(store, names.parse(name))


def _fake(model: Model, replies: list[str] | None = None) -> LocalSession:
    """`model` loaded in this process on the scripted engine answering `replies`."""
    replies = replies or ["Hello!"]
    return LocalSession(open_local(model.load_spec({}), backend="fake", extra={"replies": replies}))


@pytest.fixture
def folder(tmp_path: Path, tiny_model: Path) -> Path:
    (tmp_path / "tiny.gguf").write_bytes(tiny_model.read_bytes())
    return tmp_path


def test_stop_sequences_end_the_answer(store: Store, folder: Path) -> None:
    m = _model(store, folder, "FROM tiny.gguf\nPARAMETER stop STOP\n")
    r = _fake(m, ["Hello STOP world"])
    reply = r.chat([{"role": "user", "content": "hi"}])
    assert "".join(reply) == "Hello " and reply.text == "Hello "
    assert reply.done_reason == "stop"


def test_a_reasoning_models_thinking_is_split_off(store: Store, folder: Path) -> None:
    from testmodels.vocab import THINKING_TEMPLATE

    from localrun.errors import BadRequestError

    source = THINKING_TEMPLATE
    m = _model(store, folder, f'FROM tiny.gguf\nTEMPLATE """{source}"""\nPARAMETER stop wor\n')
    r = _fake(m, ["<think>plan</think>answer world"])
    seen: list[str] = []
    reply = r.chat([{"role": "user", "content": "hi"}], think=True)
    reply.on_thinking = seen.append
    assert "".join(reply) == "answer " and reply.text == "answer "  # the stop applies to it
    assert reply.thinking == "plan" == "".join(seen)
    hidden = r.chat([{"role": "user", "content": "hi"}], think=False)
    assert "".join(hidden) == "answer " and hidden.thinking == ""
    plain = _fake(_model(store, folder, "FROM tiny.gguf\n", name="plain"), ["x"])
    with pytest.raises(BadRequestError, match="does not support thinking"):
        plain.chat([{"role": "user", "content": "hi"}], think="high")


def test_a_partial_stop_sequence_is_released(store: Store, folder: Path) -> None:
    m = _model(store, folder, "FROM tiny.gguf\nPARAMETER stop abc\n")
    r = _fake(m, ["xabxab"])
    reply = r.chat([{"role": "user", "content": "hi"}])
    assert "".join(reply) == "xabxab"
    assert reply.done_reason == "stop"  # the fake's own end of turn


def test_options_override_and_are_validated(store: Store, folder: Path) -> None:
    m = _model(store, folder, "FROM tiny.gguf\n")
    r = _fake(m, ["0123456789"])
    reply = r.chat([{"role": "user", "content": "hi"}], options={"num_predict": 4})
    assert "".join(reply) == "0123" and reply.done_reason == "length"
    with pytest.raises(InvalidParameterError):
        r.chat([{"role": "user", "content": "hi"}], options={"top_p": 5})


def test_system_messages_and_template_layers(store: Store, folder: Path) -> None:
    m = _model(
        store,
        folder,
        "FROM tiny.gguf\nSYSTEM be kind\nMESSAGE user q1\nMESSAGE assistant a1\n"
        'TEMPLATE """{% for m in messages %}[{{ m.role }}:{{ m.content }}]{% endfor %}'
        '{% if add_generation_prompt %}[assistant:{% endif %}"""\n',
    )
    r = _fake(m, ["ok"])
    "".join(r.chat([{"role": "user", "content": "q2"}]))
    prompt = "".join(map(chr, r.runner.engine.prompts[-1]))
    assert prompt == "[system:be kind][user:q1][assistant:a1][user:q2][assistant:"
    "".join(r.chat([{"role": "user", "content": "q2"}], system="be brief"))
    assert "".join(map(chr, r.runner.engine.prompts[-1])).startswith("[system:be brief]")
    own = [{"role": "system", "content": "mine"}, {"role": "user", "content": "q"}]
    "".join(r.chat(own))
    assert "".join(map(chr, r.runner.engine.prompts[-1])).startswith("[system:mine][user:q1]")


def test_follow_up_reuses_the_cache(store: Store, folder: Path) -> None:
    m = _model(store, folder, "FROM tiny.gguf\n")
    r = _fake(m, ["first", "second"])
    convo = [{"role": "user", "content": "hello"}]
    one = r.chat(convo)
    convo.append({"role": "assistant", "content": "".join(one)})
    convo.append({"role": "user", "content": "again"})
    two = r.chat(convo)
    "".join(two)
    assert two.timings.cached_tokens > one.timings.prompt_tokens
    # Only the end of the first answer and the new user turn are new (the fake counts characters).
    new_part = "<|im_end|>\n<|im_start|>user\nagain<|im_end|>\n<|im_start|>assistant\n"
    assert two.timings.prompt_tokens <= len(new_part)


def test_num_ctx_above_training_warns(store: Store, folder: Path) -> None:
    m = _model(store, folder, "FROM tiny.gguf\nPARAMETER num_ctx 1024\n")
    warnings = _fake(m).runner.loaded.warnings
    assert any("larger than the 256 tokens" in w for w in warnings)


def test_default_context_is_capped_by_training(store: Store, folder: Path) -> None:
    m = _model(store, folder, "FROM tiny.gguf\n")
    r = _fake(m)
    assert r.runner.engine.options.num_ctx == 256
    assert r.runner.engine.options.num_thread >= 1
    assert r.runner.engine.options.num_gpu == 0  # this build has no GPU offload


# -- templates ---------------------------------------------------------------------------------

HOSTILE = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
]


def test_templates_change_only_their_own_copy() -> None:
    # Lists are mutable in templates (Kimi K2's appends to one it made); what the caller
    # passed stays as it was.
    given = [{"role": "user", "content": "hi"}]
    source = "{% set _ = messages.append({'role': 'user'}) %}{{ messages | length }}"
    assert template.render(source, given) == "2"
    assert given == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("source", HOSTILE)
def test_templates_are_sandboxed(source: str) -> None:
    with pytest.raises(TemplateError):
        template.render(source, [{"role": "user", "content": "hi"}])


@pytest.mark.parametrize(
    "source", ["{{ 'a' * 100000000 }}", "{{ [1] * 10000000 }}", "{{ 10 ** 100000 }}"]
)
def test_templates_cannot_exhaust_memory(source: str) -> None:
    with pytest.raises(TemplateError):
        template.render(source, [])


def test_template_errors_are_typed() -> None:
    with pytest.raises(TemplateError, match="refused"):
        template.render("{{ raise_exception('no system role') }}", [])
    with pytest.raises(TemplateError, match="not valid Jinja"):
        template.render("{% for %}", [])
    with pytest.raises(TemplateError):
        template.render("{{ messages[5].content }}", [])


def test_default_is_chatml_and_markers() -> None:
    text = template.render(None, [{"role": "user", "content": "hi"}])
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert template.end_of_turn_markers(None) == ["<|im_end|>"]
    assert template.render("{{ messages | tojson }}", [{"role": "user", "content": "é"}]) == (
        '[{"role": "user", "content": "é"}]'
    )
