"""Settings parsers: durations (keep_alive), counts, origins, and their display."""

from __future__ import annotations

import math

import pytest

from localrun.errors import ConfigError
from localrun.settings import config, limits, view


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("250ms", 0.25),
        ("30", 30.0),
        ("2.5", 2.5),
        (10, 10.0),
        (0, 0.0),
        ("0", 0.0),
        ("-1", math.inf),
        (-1, math.inf),
        ("-5m", math.inf),
    ],
)
def test_durations_follow_ollama_keep_alive(value: str | int, seconds: float) -> None:
    assert config.parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "5x", "m5", "5m3", "soon", None, True, "nan", float("nan")])
def test_bad_durations_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        config.parse_duration(value)  # type: ignore[arg-type]


def test_server_settings_parse_and_fail_with_the_setting_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert config.keep_alive() == 300.0
    assert config.num_parallel() == 4
    assert "http://localhost:*" in config.origins()
    monkeypatch.setenv("LOCALRUN_KEEP_ALIVE", "-1")
    monkeypatch.setenv("LOCALRUN_MAX_QUEUE", "0")
    monkeypatch.setenv("LOCALRUN_ORIGINS", "https://app.example, http://localhost:3000")
    assert config.keep_alive() == math.inf
    assert config.max_queue() == 0
    assert config.origins() == ("https://app.example", "http://localhost:3000")
    monkeypatch.setenv("LOCALRUN_NUM_PARALLEL", "0")
    with pytest.raises(ConfigError, match="LOCALRUN_NUM_PARALLEL"):
        config.num_parallel()


def test_the_api_key_is_never_displayed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALRUN_API_KEY", "s3cret-token")
    shown = {row.name: row.value for row in view.describe()}
    assert shown["LOCALRUN_API_KEY"] == "(set)"
    assert "s3cret" not in repr(view.describe())


def test_connection_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    assert limits.header_timeout() == 10.0 and limits.body_timeout() == 60.0
    assert limits.idle_timeout() == 5.0
    assert limits.max_connections() == 1000 and limits.max_connections_per_client() == 256
    monkeypatch.setenv("LOCALRUN_HEADER_TIMEOUT", "1m30s")
    assert limits.header_timeout() == 90.0
    shown = {row.name: row.value for row in view.describe()}
    assert shown["LOCALRUN_HEADER_TIMEOUT"] == "90s"
    for bad in ("0", "-1", "soon"):  # a timeout of never is no timeout
        monkeypatch.setenv("LOCALRUN_BODY_TIMEOUT", bad)
        with pytest.raises(ConfigError, match="LOCALRUN_BODY_TIMEOUT"):
            limits.body_timeout()
    monkeypatch.setenv("LOCALRUN_MAX_CONNECTIONS", "0")
    with pytest.raises(ConfigError, match="LOCALRUN_MAX_CONNECTIONS"):
        limits.max_connections()


@pytest.mark.parametrize("blank", [" ", "\t", " \t\n"])
def test_a_blank_api_key_is_refused(monkeypatch: pytest.MonkeyPatch, blank: str) -> None:
    monkeypatch.setenv("LOCALRUN_API_KEY", blank)
    with pytest.raises(ConfigError, match=r"LOCALRUN_API_KEY.*whitespace"):
        config.api_key()
    monkeypatch.setenv("LOCALRUN_API_KEY", " k3y\n")
    assert config.api_key() == "k3y"
    monkeypatch.setenv("LOCALRUN_API_KEY", "")
    assert config.api_key() == ""  # empty is unset


def test_image_url_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    assert limits.image_url_hosts() == ()
    monkeypatch.setenv("LOCALRUN_IMAGE_URL_HOSTS", " Images.Example.com., [::1], 127.0.0.1")
    assert limits.image_url_hosts() == ("images.example.com", "::1", "127.0.0.1")
    for bad in ("https://images.example.com", "example.com:8080", "example.com/cats"):
        monkeypatch.setenv("LOCALRUN_IMAGE_URL_HOSTS", bad)
        with pytest.raises(ConfigError, match=r"LOCALRUN_IMAGE_URL_HOSTS.*not a host name"):
            limits.image_url_hosts()


def test_numbers_that_code_below_relies_on_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each was accepted, then failed every request that read it (issue 76).
    bad_values = (
        "-5",
        "0",
        "1.5",
        "abc",
        "1e6",
        "0x1000",
        "²",
        "99999999999",
        "16777217",
        "9" * 5000,
    )
    for bad in bad_values:
        monkeypatch.setenv("LOCALRUN_CONTEXT_LENGTH", bad)
        with pytest.raises(ConfigError, match=r"LOCALRUN_CONTEXT_LENGTH: .* from 1 to 16777216"):
            config.context_length()
    monkeypatch.setenv("LOCALRUN_CONTEXT_LENGTH", " 16777216 ")  # a request's num_ctx bound
    assert config.context_length() == 2**24
    monkeypatch.setenv("LOCALRUN_NUM_PARALLEL", "257")  # llama.cpp's LLAMA_MAX_SEQ is 256
    with pytest.raises(ConfigError, match="LOCALRUN_NUM_PARALLEL"):
        config.num_parallel()
    monkeypatch.setenv("LOCALRUN_MAX_JSON_DEPTH", "257")
    with pytest.raises(ConfigError, match="LOCALRUN_MAX_JSON_DEPTH"):
        limits.max_json_depth()
    # A wait on a thread or a process overflows past about 292 years; -1 (forever) is inf.
    for bad in ("-1", "0", "1e300", "999999h"):
        monkeypatch.setenv("LOCALRUN_LOAD_TIMEOUT", bad)
        with pytest.raises(ConfigError, match="LOCALRUN_LOAD_TIMEOUT"):
            limits.load_timeout()
        monkeypatch.setenv("LOCALRUN_IDLE_TIMEOUT", bad)
        with pytest.raises(ConfigError, match="LOCALRUN_IDLE_TIMEOUT"):
            limits.idle_timeout()
    monkeypatch.setenv("LOCALRUN_LOAD_TIMEOUT", "720h")
    assert limits.load_timeout() == 30 * 86400


def test_trusted_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    assert config.trusted_proxies() == ()  # none: a client is the connection's peer
    monkeypatch.setenv("LOCALRUN_TRUSTED_PROXIES", " 10.0.0.2, 10.1.0.0/16 ,[::1],fd00::/8")
    assert config.trusted_proxies() == ("10.0.0.2", "10.1.0.0/16", "::1", "fd00::/8")
    for bad in ("proxy.example", "10.0.0.0/33", "10.0.0.2:80"):
        monkeypatch.setenv("LOCALRUN_TRUSTED_PROXIES", bad)
        with pytest.raises(ConfigError, match="LOCALRUN_TRUSTED_PROXIES"):
            config.trusted_proxies()
