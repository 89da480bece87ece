"""HTTPS: `localrun serve --tls-cert --tls-key` with a certificate from a CA the test makes
(trustme), the CLI and the official clients as its clients, and every bad pair refused in one
line before anything listens."""

from __future__ import annotations

import re
import ssl
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import trustme

from localrun.store.local import Store

from support import PATIENCE_S
from support.cli import CLI, assert_one_line_error
from support.serve import Serve, gateway
from support.server import add_model

pytestmark = [pytest.mark.server, pytest.mark.model]


class Pair:
    """A CA, and a certificate it issued for 127.0.0.1 and localhost, written to files."""

    def __init__(self, folder: Path, ca: trustme.CA | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.ca = ca or trustme.CA()
        issued = self.ca.issue_cert("127.0.0.1", "localhost")
        self.cert = folder / "cert.pem"
        self.key = folder / "key.pem"
        self.ca_file = folder / "ca.pem"
        for blob in issued.cert_chain_pems:
            with open(self.cert, "ab") as f:
                f.write(blob.bytes())
        issued.private_key_pem.write_to_path(str(self.key))
        self.key.chmod(0o600)
        self.ca.cert_pem.write_to_path(str(self.ca_file))


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    return Pair(tmp_path / "tls")


@pytest.fixture
def served(home: Path, tiny_model: Path, pair: Pair) -> Iterator[Serve]:
    add_model(Store(home / "models"), "tiny", tiny_model)
    server = Serve(home, "--tls-cert", str(pair.cert), "--tls-key", str(pair.key))
    yield server
    server.kill()


def test_https_only_and_the_clients_trust_the_ca_they_are_given(
    served: Serve, pair: Pair, cli: CLI
) -> None:
    assert re.fullmatch(r"https://127\.0\.0\.1:\d+", served.url)
    assert served.proc.stdout is not None
    assert served.proc.stdout.readline().strip() == f"chat in a browser: {served.url}/ui/"
    ca = str(pair.ca_file)
    trust = ssl.create_default_context(cafile=ca)
    assert httpx.get(served.url + "/api/version", verify=trust).json()["version"]
    # HTTPS only: plain HTTP on the port gets no answer.
    with pytest.raises(httpx.HTTPError):
        httpx.get(served.url.replace("https://", "http://") + "/api/version", timeout=5)
    # The official client, verifying with the CA.
    ai = openai.OpenAI(
        base_url=served.url + "/v1", api_key="x", http_client=httpx.Client(verify=trust)
    )
    answer = ai.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert answer.usage is not None and answer.usage.completion_tokens > 0
    # The CLI as a client: `run` goes through the server, `ps` shows the model it loaded.
    env = {"LOCALRUN_HOST": served.url, "LOCALRUN_CA_FILE": ca}
    ran = cli("run", "tiny", "hello", env=env)
    assert ran.code == 0, ran.stderr
    shown = cli("ps", env=env)
    assert shown.code == 0 and "tiny" in shown.stdout, shown


def test_a_client_that_cannot_trust_or_reach_tls_says_how_to_fix_it(
    served: Serve, pair: Pair, cli: CLI, tmp_path: Path
) -> None:
    # The system's store does not know the test's CA: refused, not run locally instead.
    untrusted = cli("run", "tiny", "hello", env={"LOCALRUN_HOST": served.url})
    assert_one_line_error(untrusted, "does not trust", "LOCALRUN_CA_FILE")
    other = Pair(tmp_path / "other")  # a CA that did not sign this certificate
    wrong = cli("ps", env={"LOCALRUN_HOST": served.url, "LOCALRUN_CA_FILE": str(other.ca_file)})
    assert_one_line_error(wrong, "does not trust")
    missing = cli(
        "ps", env={"LOCALRUN_HOST": served.url, "LOCALRUN_CA_FILE": str(tmp_path / "none.pem")}
    )
    assert_one_line_error(missing, "LOCALRUN_CA_FILE", "none.pem")
    plain = cli("ps", env={"LOCALRUN_HOST": served.address})
    assert_one_line_error(plain, f"LOCALRUN_HOST=https://{served.address}")


def test_the_gateway_reaches_an_https_upstream_with_the_ca_file(
    served: Serve, pair: Pair, tmp_path: Path
) -> None:
    body = {"model": "tiny", "prompt": "the", "stream": False, "options": {"num_predict": 3}}
    env = {"LOCALRUN_CA_FILE": str(pair.ca_file)}
    gw = gateway(tmp_path / "gw", {"box": {"url": served.url, "models": ["tiny"]}}, **env)
    try:
        answer = httpx.post(gw.url + "/v1/completions", json=body, timeout=PATIENCE_S)
        assert answer.status_code == 200, answer.text
    finally:
        gw.kill()


def test_settings_serve_https_too(home: Path, pair: Pair) -> None:
    env = {"LOCALRUN_TLS_CERT": str(pair.cert), "LOCALRUN_TLS_KEY": str(pair.key)}
    server = Serve(home, env=env)
    try:
        trust = ssl.create_default_context(cafile=str(pair.ca_file))
        got = httpx.get(server.url + "/api/version", verify=trust)
        assert got.status_code == 200
    finally:
        server.kill()


def test_bad_pairs_are_refused_in_one_line(cli: CLI, pair: Pair, tmp_path: Path) -> None:
    other = Pair(tmp_path / "other")
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_text(
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n"
    )
    encrypted.chmod(0o600)
    open_key = tmp_path / "open-key.pem"
    open_key.write_bytes(pair.key.read_bytes())
    open_key.chmod(0o644)
    cases: list[tuple[list[str], tuple[str, ...]]] = [
        (["--tls-cert", str(pair.cert)], ("--tls-cert needs its pair",)),
        (["--tls-key", str(pair.key)], ("--tls-key needs its pair",)),
        (["--tls-cert", str(tmp_path / "no.pem"), "--tls-key", str(pair.key)], ("does not exist",)),
        (["--tls-cert", str(pair.key), "--tls-key", str(pair.key)], ("not a PEM certificate",)),
        (["--tls-cert", str(pair.cert), "--tls-key", str(pair.cert)], ("not a PEM private key",)),
        (["--tls-cert", str(pair.cert), "--tls-key", str(encrypted)], ("is encrypted",)),
        (["--tls-cert", str(pair.cert), "--tls-key", str(open_key)], ("other users", "chmod 600")),
        (["--tls-cert", str(pair.cert), "--tls-key", str(other.key)], ("is not the key of",)),
    ]
    for args, says in cases:
        result = cli("serve", "--port", "0", *args, timeout=30)
        assert_one_line_error(result, *says)
        assert "listening" not in result.stdout
    assert stat.S_IMODE(open_key.stat().st_mode) == 0o644  # nothing was changed for the user
