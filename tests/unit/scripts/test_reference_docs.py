"""docs/reference/ is generated from the code by scripts/maintenance/make_reference.py: each
committed page must be what the code renders now, and the generator must refuse to render what the
code does not describe."""

from __future__ import annotations

from pathlib import Path

import pytest
from maintenance import make_reference
from refpages import errors as errors_page
from refpages import markdown
from refpages import modelfile as modelfile_page
from refpages import settings as settings_page

from localrun.engine.types import SamplingOptions
from localrun.hardware.offload import DEFAULT_NUM_BATCH
from localrun.recipes import params
from localrun.server.anthropic import routes as anthropic
from localrun.server.llamacpp import routes as llamacpp
from localrun.server.openai import routes as openai
from localrun.server.responses import input as responses_input
from localrun.settings import config, parse
from localrun.settings.setting import Setting


def _committed(name: str) -> str | None:
    path = make_reference.OUT / name
    return path.read_text(encoding="utf-8") if path.exists() else None


@pytest.mark.parametrize("name", list(make_reference.PAGES))
def test_each_committed_page_is_what_the_code_renders(name: str) -> None:
    fresh = make_reference.PAGES[name]()
    committed = _committed(name)
    if committed != fresh:
        pytest.fail(make_reference.stale(name, committed, fresh), pytrace=False)


def test_a_page_does_not_depend_on_this_machines_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Defaults are the code's, never the environment's: a developer's LOCALRUN_* settings (or
    # platform folders) must not make the committed pages look stale.
    monkeypatch.setenv("LOCALRUN_HOME", str(tmp_path))
    monkeypatch.setenv("LOCALRUN_KEEP_ALIVE", "1h")
    monkeypatch.setenv("LOCALRUN_SPECULATE", "off")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name, render in make_reference.PAGES.items():
        assert render() == _committed(name), name


def test_a_stale_page_is_named_with_its_first_differences_and_the_command() -> None:
    committed = "line one\nline two\nline three\n"
    fresh = "line one\nline 2\nline three\n"
    message = make_reference.stale("settings.md", committed, fresh)
    assert message.startswith("docs/reference/settings.md is stale")
    assert markdown.COMMAND in message
    assert "-line two" in message and "+line 2" in message
    assert "missing" in make_reference.stale("cli.md", None, fresh)


def test_the_check_mode_passes_on_the_committed_pages(capsys: pytest.CaptureFixture[str]) -> None:
    assert make_reference.main(["--check"]) == 0
    assert capsys.readouterr().err == ""


def test_a_setting_without_help_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    bare = Setting("LOCALRUN_UNDESCRIBED", "", parse.parse_bool, lambda: False)
    monkeypatch.setitem(config.SETTINGS, bare.name, bare)
    with pytest.raises(markdown.MissingText, match="LOCALRUN_UNDESCRIBED"):
        settings_page.settings_page()


def test_a_setting_whose_parser_says_nothing_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def parse_anything(text: str) -> str:
        return text

    odd = Setting("LOCALRUN_ODD", "An odd one.", parse_anything, lambda: "")
    monkeypatch.setitem(config.SETTINGS, odd.name, odd)
    with pytest.raises(markdown.MissingText, match="parse_anything"):
        settings_page.settings_page()


def test_a_parameter_with_no_default_anywhere_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = params.ParamSpec("mirostat", int, "Mirostat sampling", 0, 2)
    monkeypatch.setitem(params.SPECS, spec.name, spec)
    with pytest.raises(markdown.MissingText, match="mirostat"):
        modelfile_page.modelfile_page()


def test_every_error_class_has_a_docstring_of_its_own() -> None:
    for _, cls in errors_page.error_classes():
        assert markdown.own_doc(cls), cls.__name__


def test_request_fields_are_read_from_each_dialects_translation() -> None:
    assert modelfile_page.request_fields(anthropic.options_of) == {
        "temperature": ["temperature"],
        "top_p": ["top_p"],
        "top_k": ["top_k"],
        "stop": ["stop_sequences"],
        "num_predict": ["max_tokens"],
    }
    openai_fields = modelfile_page.request_fields(openai.options_of)
    assert openai_fields["num_predict"] == ["max_completion_tokens", "max_tokens"]
    assert openai_fields["repeat_penalty"] == ["repetition_penalty", "repeat_penalty"]
    assert modelfile_page.request_fields(responses_input.options_of)["num_predict"] == [
        "max_output_tokens"
    ]
    assert modelfile_page.request_fields(llamacpp.options_of)["num_predict"] == ["n_predict"]


def test_defaults_come_from_where_the_code_applies_them() -> None:
    # The engine's sampling defaults, and the load defaults params.py words.
    assert modelfile_page.param_default(params.SPECS["temperature"]) == str(
        SamplingOptions().temperature
    )
    assert modelfile_page.param_default(params.SPECS["num_batch"]) == str(DEFAULT_NUM_BATCH)
    assert settings_page.setting_default(config.SETTINGS["LOCALRUN_KEEP_ALIVE"]) == "`5m`"
    assert settings_page.setting_default(config.SETTINGS["LOCALRUN_RESPONSES_MAX_AGE"]) == "`720h`"
