"""`pull`, `push` and `cp` against registries: the real distribution server (Debian's
`docker-registry`, holding models pushed in Ollama's and Docker Model Runner's formats) and a
server that behaves as registry.ollama.ai does where it differs (scripts/hubs/registries.py): its
redirect to object storage on another host, its token service, its rate limit. Blobs come in
parallel ranges, resume, are verified and deduplicated; hostile registries are refused in one
line with nothing half-written in the store.
"""

from __future__ import annotations

import contextlib
import gzip
import ipaddress
import json
import os
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from hubs import registries
from hubs.registries import (
    DOCKER_MANIFEST,
    OLLAMA,
    DockerRegistry,
    FakeOllamaRegistry,
    digest_of,
)
from testmodels.files import write_split

from localrun.errors import (
    DownloadError,
    ForbiddenError,
    HubAuthError,
    HubError,
    LocalrunError,
    ModelNotFoundError,
)
from localrun.recipes import create, modelfile
from localrun.sources import bodies, hosts, obtain, ranges
from localrun.sources.registry import challenge, oci, push
from localrun.sources.registry import pull as registry
from localrun.store import names, reference
from localrun.store.local import Store

from support import free_port
from support.cli import CLI, assert_one_line_error
from support.proxy import ForwardProxy
from support.server import pulled_again

TEMPLATE = "{{ if .System }}<|system|>{{ .System }}{{ end }}<|user|>{{ .Prompt }}<|assistant|>"
JINJA = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}<|assistant|>"
CONFIG = ("application/vnd.docker.container.image.v1+json", b'{"model_format":"gguf"}')

needs_registry = pytest.mark.skipif(
    registries.docker_registry_binary() is None,
    reason="no docker-registry (scripts/system-deps installs Debian's where it may)",
)


@pytest.fixture(scope="module")
def distribution(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerRegistry]:
    if registries.docker_registry_binary() is None:
        pytest.skip("no docker-registry (scripts/system-deps installs Debian's where it may)")
    server = DockerRegistry(tmp_path_factory.mktemp("registry"))
    yield server
    server.close()


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOllamaRegistry]:
    server = FakeOllamaRegistry()
    monkeypatch.setenv("LOCALRUN_REGISTRY", server.url)
    monkeypatch.setattr(ranges, "PIECE", 64 << 10)  # the tiny model comes in 8 pieces
    monkeypatch.setattr(registry, "LOCAL_STREAMS", 4)  # as from a registry elsewhere
    monkeypatch.setattr(ranges, "RETRIES", 1)
    monkeypatch.setattr(oci, "RETRIES", 1)
    yield server
    server.close()
    assert not server.errors, server.errors


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Store]]:
    from localrun.scheduler import Scheduler

    from support.server import LiveServer

    store = Store(tmp_path / "served" / "models")
    server = LiveServer(store, Scheduler(store, backend="fake"))
    yield server.url, store
    server.close()


def _ollama_layers(gguf: bytes) -> list[tuple[str, bytes]]:
    params = json.dumps({"stop": ["<|user|>"], "temperature": 0.25, "unknown_knob": 3})
    said = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ho"}]
    messages = json.dumps(said)
    return [
        (OLLAMA + "model", gguf),
        (OLLAMA + "template", TEMPLATE.encode()),
        (OLLAMA + "system", b"You keep the lighthouse."),
        (OLLAMA + "params", params.encode()),
        (OLLAMA + "messages", messages.encode()),
        (OLLAMA + "license", b"The lighthouse license"),
    ]


def _nothing_half_written(store: Store, name: str) -> None:
    """No manifest under `name`, no temporary file, no model blob: the refusal left nothing."""
    assert not store.exists(names.parse(name))
    blobs = list(store.blobs.iterdir()) if store.blobs.is_dir() else []
    assert all(p.stat().st_size < 4096 for p in blobs), blobs  # texts and configs at most
    assert not [p for p in blobs if p.name.startswith(".tmp")]


# -- Ollama's registry ----------------------------------------------------------------------------


def test_a_library_name_comes_from_ollamas_registry_in_ranges_through_its_storage(
    fake: FakeOllamaRegistry, store: Store, tiny_model: Path
) -> None:
    gguf = tiny_model.read_bytes()
    fake.token = "secret-token"
    fake.rate_limited = 1
    fake.add("library/keeper", "latest", CONFIG, _ollama_layers(gguf))
    events: list[create.Event] = []
    digest = obtain.from_registry(store, reference.parse("keeper"), events.append)

    manifest = store.read_manifest(names.parse("keeper"))
    assert digest.startswith("sha256:")
    assert [layer.digest for layer in manifest.of_kind("model")] == [digest_of(gguf)]
    assert store.blob_path(digest_of(gguf)).read_bytes() == gguf
    # Ranges in parallel, from the storage host the registry redirected to, with no token.
    sent = fake.sent(gguf)
    assert len(sent) == -(-len(gguf) // (64 << 10))
    assert sorted(sent)[0][0] == 0 and sum(e - s + 1 for s, e in sent) == len(gguf)
    assert fake.most_open > 1
    assert fake.storage_auth == []
    progress = [e for e in events if e.completed is not None]
    assert progress and progress[-1].completed == progress[-1].total == len(gguf)
    # Ollama's packaging became the model's: template, system, parameters, messages, license.
    config = json.loads(store.read_blob(manifest.config.digest))
    assert config["source"]["packaging"] == "ollama"
    assert config["source"]["manifest"] == digest_of(fake.models[("library/keeper", "latest")])
    assert store.read_blob(manifest.of_kind("template")[0].digest).decode() == TEMPLATE
    assert store.read_blob(manifest.of_kind("system")[0].digest) == b"You keep the lighthouse."
    params = json.loads(store.read_blob(manifest.of_kind("params")[0].digest))
    assert params == {"stop": ["<|user|>"], "temperature": 0.25}
    said = json.loads(store.read_blob(manifest.of_kind("messages")[0].digest))
    assert said == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ho"}]

    # Pulled again with nothing changed there: no byte of a blob is sent again.
    sent = fake.blob_bytes
    assert obtain.from_registry(store, reference.parse("keeper")) == digest
    assert fake.blob_bytes == sent


def test_a_second_model_with_the_same_weights_downloads_only_its_own_layers(
    fake: FakeOllamaRegistry, store: Store, tiny_model: Path
) -> None:
    gguf = tiny_model.read_bytes()
    fake.add("library/keeper", "latest", CONFIG, _ollama_layers(gguf))
    fake.add("someone/keeper", "v2", CONFIG, [(OLLAMA + "model", gguf),
                                              (OLLAMA + "system", b"Another keeper.")])  # fmt: skip
    registry.pull(store, names.parse("keeper"))
    sent = len(fake.sent(gguf))
    registry.pull(store, names.parse("someone/keeper:v2"))
    assert len(fake.sent(gguf)) == sent  # the weights: not a byte again
    two = store.read_manifest(names.parse("someone/keeper:v2"))
    assert store.read_blob(two.of_kind("system")[0].digest) == b"Another keeper."


def test_a_blob_ollama_has_on_this_machine_is_linked_not_downloaded(
    fake: FakeOllamaRegistry, store: Store, tiny_model: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    gguf = tiny_model.read_bytes()
    fake.add("library/keeper", "latest", CONFIG, _ollama_layers(gguf))
    ollama = tmp_path / "ollama-models" / "blobs"
    ollama.mkdir(parents=True)
    mine = ollama / f"sha256-{digest_of(gguf).removeprefix('sha256:')}"
    mine.write_bytes(gguf)
    monkeypatch.setenv("OLLAMA_MODELS", str(ollama.parent))
    registry.pull(store, names.parse("keeper"))
    assert fake.sent(gguf) == []
    assert store.blob_path(digest_of(gguf)).read_bytes() == gguf
    # A blob there that is not what its name says is fetched instead.
    other = tmp_path / "other"
    mine.unlink()  # (the store's blob may be a hard link of it)
    mine.write_bytes(gguf[:-1] + b"!")
    registry.pull(Store(other), names.parse("keeper"))
    assert fake.sent(gguf) and mine.read_bytes() == gguf[:-1] + b"!"  # left as it was


def test_an_interrupted_pull_resumes_with_what_is_missing(
    fake: FakeOllamaRegistry, store: Store, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf = tiny_model.read_bytes()
    fake.add("library/keeper", "latest", CONFIG, _ollama_layers(gguf))
    monkeypatch.setattr(registry, "LOCAL_STREAMS", 1)  # pieces in order: the first come whole
    fake.cut_after = 40 << 10  # every connection drops after 40 KB of a 64 KB piece ...
    original = ranges._Job._piece
    pieces = {"left": 3}

    def flaky(job: ranges._Job, fd: int, index: int) -> None:
        whole = pieces["left"] > 0  # ... except the first three pieces'
        fake.cut_after = None if whole else 40 << 10
        pieces["left"] -= 1
        original(job, fd, index)

    monkeypatch.setattr(ranges._Job, "_piece", flaky)
    with pytest.raises(DownloadError, match="run the pull again to resume"):
        registry.pull(store, names.parse("keeper"))
    assert not store.exists(names.parse("keeper"))
    state = next((store.root / "partial").glob("*/state.json"))
    assert json.loads(state.read_text())["whole"] == 3  # hashed, on the disk, recorded
    assert ranges.kept(ranges.Blob(digest_of(gguf), len(gguf), state.parent, "")) == 3 << 16

    monkeypatch.setattr(ranges._Job, "_piece", original)
    fake.cut_after, fake.ranges = None, []
    registry.pull(store, names.parse("keeper"))
    assert min(start for start, _ in fake.sent(gguf)) == 3 * (64 << 10)  # only what was missing
    assert store.blob_path(digest_of(gguf)).read_bytes() == gguf
    assert not list((store.root / "partial").iterdir())


def test_a_pull_through_the_server_streams_progress_to_ollamas_client(
    fake: FakeOllamaRegistry, tiny_model: Path, served: tuple[str, Store]
) -> None:
    import ollama

    fake.add("library/keeper", "v1", CONFIG, _ollama_layers(tiny_model.read_bytes()))
    client = ollama.Client(host=served[0])
    updates = list(client.pull("keeper:v1", stream=True))
    assert updates[-1].status == "success"
    assert any(u.total == tiny_model.stat().st_size for u in updates)
    assert "keeper:v1" in [m.model for m in client.list().models]
    # Pulled again, unchanged there: Ollama's steps for a model it has, from the manifest.
    sent = fake.blob_bytes
    pulled_again(list(client.pull("keeper:v1", stream=True)), served[1], "keeper:v1")
    assert fake.blob_bytes == sent
    # Its template came from Ollama's packaging, a Go template: /api/show gives it as it is.
    shown = client.show("keeper:v1")
    assert shown.template == TEMPLATE
    assert modelfile.parse(shown.modelfile or "").template == TEMPLATE
    with pytest.raises(ollama.ResponseError) as missing:
        client.pull("no-such-model")
    assert "no-such-model" in str(missing.value)


# -- who may pull and push through the server (docs/registries.md) --------------------------


def _lan_address() -> str:
    """This machine's address on its network (not loopback), or the test is skipped."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # a UDP connect sends nothing: the route picks it
            address = str(s.getsockname()[0])
        except OSError:
            address = ""
    if not address or ipaddress.ip_address(address).is_loopback:
        pytest.skip("this machine has no address beside loopback")
    return address


def test_an_api_client_learns_nothing_of_the_servers_loopback_ports(
    fake: FakeOllamaRegistry, served: tuple[str, Store], tiny_model: Path, cli: CLI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    url, _ = served
    layers = _ollama_layers(tiny_model.read_bytes())
    web = FakeOllamaRegistry()  # any HTTP service answering in OCI's shape ("manifest unknown")
    locked = FakeOllamaRegistry(token="t", login=("ann", "s3cret"))  # behind a login
    service = registries.Listener()  # not HTTP
    web.add("library/keeper", "latest", CONFIG, layers)
    locked.add("library/keeper", "latest", CONFIG, layers)
    monkeypatch.setenv("LOCALRUN_REGISTRY_AUTH", f"{locked.url[7:]}=ann:s3cret")
    try:
        ports = {
            "closed": f"127.0.0.1:{free_port()}",
            "not http": service.host,
            "http": web.url.removeprefix("http://"),
            "login": locked.url.removeprefix("http://"),
            "by name": "localhost:" + web.url.rsplit(":", 1)[1],
        }
        said = set()
        for what, host in ports.items():
            for op, stream in (("pull", False), ("pull", True), ("push", False)):
                body = {"model": f"{host}/library/keeper", "stream": stream, "insecure": True}
                answer = httpx.post(f"{url}/api/{op}", json=body, timeout=30)
                assert answer.status_code == 403, (what, op, answer.text)
                said.add(json.dumps(answer.json()).replace(host, "HOST"))
        # Nothing else a client sends makes the server reach a registry: a create FROM a
        # registry's name, a chat naming one.
        named = f"{ports['http']}/library/keeper"
        created = httpx.post(
            f"{url}/api/create", json={"model": "m", "from": named, "stream": False}
        )
        chat = {"model": named, "messages": [{"role": "user", "content": "hi"}], "stream": False}
        assert created.status_code == httpx.post(f"{url}/api/chat", json=chat).status_code == 404
        # One answer a verb whatever is there, naming the setting; nothing was connected to.
        assert len(said) == 2, said
        assert all("LOCALRUN_API_REGISTRIES" in json.loads(text)["hint"] for text in said)
        assert service.received == [] and web.requests == [] and locked.requests == []
        # The user's own command reaches them as before, with the user's login.
        pulled = cli("pull", f"{ports['login']}/library/keeper")
        assert pulled.code == 0, pulled.stderr
        assert ("GET", "/token", "Basic " + registries.basic("ann", "s3cret")) in locked.requests
    finally:
        for server in (web, locked, service):
            server.close()


def test_an_api_clients_insecure_never_sends_the_servers_login_over_plain_http(
    served: tuple[str, Store], cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ollama

    service = registries.Listener(_lan_address())  # a host the owner listed, but not for HTTP
    monkeypatch.setenv("LOCALRUN_API_REGISTRIES", service.host)
    monkeypatch.setenv("LOCALRUN_REGISTRY_AUTH", f"{service.host}=the-servers-token")
    try:
        with pytest.raises(ollama.ResponseError):
            ollama.Client(host=served[0]).pull(f"{service.host}/team/model", insecure=True)
        assert service.received, "the listed host was reached"
        assert all(first.startswith(b"\x16\x03") for first in service.received)  # TLS
        assert not any(b"the-servers-token" in first for first in service.received)
        # The user's own `--insecure` is still theirs to give.
        service.received.clear()
        cli("pull", "--insecure", f"{service.host}/team/model")
        assert service.received and service.received[0].startswith(b"GET /v2/team/model/")
    finally:
        service.close()


def test_an_api_client_pushes_only_where_the_owner_lists_with_the_owners_login(
    fake: FakeOllamaRegistry, served: tuple[str, Store], tiny_model: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    import ollama

    from support.server import add_model

    url, store = served
    add_model(store, "keeper", tiny_model, 'SYSTEM "the team keeps it"')
    team = FakeOllamaRegistry(token="granted", login=("ann", "s3cret"))
    host = team.url.removeprefix("http://")
    monkeypatch.setenv("LOCALRUN_REGISTRY_AUTH", f"{host}=ann:s3cret")
    client = ollama.Client(host=url)
    try:
        # Copying to the team's name is the store's business; pushing it is the owner's.
        client.copy("keeper", f"{host}/team/prod:latest")
        for name in (f"{host}/team/prod:latest", "me/keeper"):  # a host, Ollama's library
            with pytest.raises(ollama.ResponseError) as refused:
                client.push(name)
            assert refused.value.status_code == 403
            assert "not for API clients" in str(refused.value)
        assert team.requests == [] and fake.requests == []

        monkeypatch.setenv("LOCALRUN_API_REGISTRIES", host)
        assert client.push(f"{host}/team/prod:latest").status == "success"
        pushed = json.loads(team.models[("team/prod", "latest")])
        system = next(x for x in pushed["layers"] if x["mediaType"] == OLLAMA + "system")
        assert team.blobs[system["digest"]] == b"the team keeps it"
        assert ("GET", "/token", "Basic " + registries.basic("ann", "s3cret")) in team.requests
        # And pulled back from the listed registry with the same login.
        client.delete(f"{host}/team/prod:latest")
        assert client.pull(f"{host}/team/prod:latest").status == "success"
        assert store.exists(names.parse(f"{host}/team/prod:latest"))
    finally:
        team.close()


def test_an_api_pull_never_looks_in_the_users_ollama_store(
    fake: FakeOllamaRegistry, served: tuple[str, Store], tiny_model: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    import ollama

    gguf = tiny_model.read_bytes()
    fake.add("library/keeper", "latest", CONFIG, _ollama_layers(gguf))
    ollamas = tmp_path / "ollama-models"
    (ollamas / "blobs").mkdir(parents=True)
    (ollamas / "blobs" / f"sha256-{digest_of(gguf).removeprefix('sha256:')}").write_bytes(gguf)
    monkeypatch.setenv("OLLAMA_MODELS", str(ollamas))
    updates = list(ollama.Client(host=served[0]).pull("keeper", stream=True))
    assert updates[-1].status == "success"
    assert fake.sent(gguf)  # served by the registry, as for a digest nobody keeps
    said = [str(u.status) for u in updates]
    assert not [line for line in said if "Ollama" in line or str(tmp_path) in line], said


def test_a_public_registry_an_api_client_names_gets_no_login_and_is_not_quoted(
    store: Store, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    public = FakeOllamaRegistry(token="granted", login=("ann", "s3cret"))
    host = public.url.removeprefix("http://")
    public.add("library/keeper", "latest", CONFIG, _ollama_layers(tiny_model.read_bytes()))
    monkeypatch.setenv("LOCALRUN_REGISTRY_AUTH", f"{host}=ann:s3cret")
    monkeypatch.setattr(hosts, "_public", lambda _: True)  # as if it were on the internet
    try:
        with pytest.raises(HubAuthError, match="asks for a login") as refused:
            registry.pull(store, names.parse(f"{host}/library/keeper"), reach=hosts.CLIENT)
        assert "LOCALRUN_API_REGISTRIES" in str(refused.value.hint)
        assert all(auth == "" for _, _, auth in public.requests), public.requests
        public.token = None  # an open registry: what it says of a missing tag is not repeated
        with pytest.raises(ModelNotFoundError) as missing:
            registry.pull(store, names.parse(f"{host}/library/keeper:nope"), reach=hosts.CLIENT)
        assert "manifest unknown" not in f"{missing.value} {missing.value.hint}"
        with pytest.raises(ModelNotFoundError) as mine:  # the user's own pull: quoted
            registry.pull(store, names.parse(f"{host}/library/keeper:nope"))
        assert "MANIFEST_UNKNOWN: manifest unknown" in str(mine.value.hint)
    finally:
        public.close()


# -- hostile registries ---------------------------------------------------------------------------


def _hostile_cases(gguf: bytes) -> list[tuple[str, object, str]]:
    """(name, how the registry misbehaves, what the one line says)."""
    model = (OLLAMA + "model", gguf)
    return [
        ("size lie", "size", "bytes"),
        ("digest lie", "digest", "digest"),
        ("endless blob", "endless", "more bytes than"),
        ("redirect loop", "loop", "redirects"),
        ("unknown layer", [model, ("application/x-surprise", b"?")], "does not know"),
        ("safetensors", [("application/vnd.docker.ai.safetensors", b"x")], "safetensors"),
        ("no model", [(OLLAMA + "system", b"hi")], "no model layer"),
        ("many layers", [model] + [(OLLAMA + "license", b"x")] * 300, "301 layers"),
        ("not json", b"<html>", "not JSON"),
        ("huge manifest", b"{" + b" " * (5 << 20) + b"}", "at most"),
        ("a million layers", registries.MILLION, "at most"),
        ("not gguf", [(OLLAMA + "model", b"GGUF" + b"\0" * 64)], "not a valid GGUF"),
    ]


@pytest.mark.parametrize("case", range(12), ids=lambda i: f"case{i}")
def test_a_hostile_registry_is_refused_in_one_line_with_nothing_half_written(
    case: int, fake: FakeOllamaRegistry, store: Store, tiny_model: Path
) -> None:
    gguf = tiny_model.read_bytes()
    _, how, said = _hostile_cases(gguf)[case]
    layers = [(OLLAMA + "model", gguf)]
    if isinstance(how, list):
        layers = how
    fake.add("library/bad", "latest", CONFIG, layers)
    if isinstance(how, bytes):
        fake.models[("library/bad", "latest")] = how
    elif how == "size":
        raw = json.loads(fake.models[("library/bad", "latest")])
        raw["layers"][0]["size"] -= 1000
        fake.models[("library/bad", "latest")] = json.dumps(raw).encode()
    elif how == "digest":
        fake.blobs[digest_of(gguf)] = gguf[:-1] + b"!"
    elif how == "endless":
        fake.endless = True
    elif how == "loop":
        fake.loop = True
    with pytest.raises(LocalrunError) as refused:
        registry.pull(store, names.parse("bad"))
    assert said in str(refused.value)
    assert "\n" not in str(refused.value)
    _nothing_half_written(store, "bad")
    if how == "digest":
        assert not list((store.root / "partial").glob("*/*"))  # a download that lied is gone


def test_a_redirect_never_carries_the_token_and_never_leaves_https(
    fake: FakeOllamaRegistry, store: Store, tiny_model: Path
) -> None:
    fake.token = "secret-token"
    fake.add("library/keeper", "latest", CONFIG, _ollama_layers(tiny_model.read_bytes()))
    registry.pull(store, names.parse("keeper"))
    assert fake.storage_auth == []
    with oci.Registry(hosts.Target("r.example", "https://r.example", "a/b", "latest")) as client:
        with pytest.raises(DownloadError, match="HTTPS to plain HTTP"):
            client._redirect("https://r.example/v2/a/b/blobs/x", "http://cdn.example/x")
        with pytest.raises(DownloadError, match="private address"):
            client._redirect("https://r.example/v2/a/b/blobs/x", "https://127.0.0.1:9/x")
        with pytest.raises(DownloadError):
            client._redirect("https://r.example/v2/a/b/blobs/x", "file:///etc/passwd")


def test_a_token_from_the_environment_is_the_registrys_bearer_token(
    fake: FakeOllamaRegistry, store: Store, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.token = "granted"
    fake.add("library/keeper", "latest", CONFIG, _ollama_layers(tiny_model.read_bytes()))
    host = fake.url.removeprefix("http://")
    monkeypatch.setenv("LOCALRUN_REGISTRY_AUTH", f"{host}=revoked")
    with pytest.raises(HubAuthError, match="refused the login"):
        registry.pull(store, names.parse("keeper"))
    monkeypatch.setenv("LOCALRUN_REGISTRY_AUTH", f"elsewhere.example=x {host}=granted")
    registry.pull(store, names.parse("keeper"))
    assert fake.storage_auth == []


def test_plain_http_only_for_loopback_or_where_the_user_allows_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def url(text: str, **kw: bool) -> str:
        return hosts.target(names.parse(text), **kw).url

    assert url("registry.example.com/a/b") == "https://registry.example.com"
    assert url("localhost:5000/a/b") == "http://localhost:5000"
    assert url("127.0.0.1:5000/a/b") == "http://127.0.0.1:5000"
    assert url("docker.io/ai/smollm2") == "https://registry-1.docker.io"
    assert url("registry.example.com/a/b", insecure=True) == "http://registry.example.com"
    monkeypatch.setenv("LOCALRUN_INSECURE_REGISTRIES", "registry.example.com")
    assert url("registry.example.com/a/b") == "http://registry.example.com"
    assert url("other.example.com:443/a/b") == "https://other.example.com:443"
    monkeypatch.setenv("LOCALRUN_REGISTRY", "https://mirror.example")
    assert url("llama3.3") == "https://mirror.example"
    assert hosts.target(names.parse("someone/model:v1")).repository == "someone/model"


def test_an_api_client_reaches_public_registries_and_those_the_owner_lists(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def where(text: str, push: bool = False, reach: hosts.Reach = hosts.CLIENT) -> tuple[str, bool]:
        found, trusted = reach.where(names.parse(text), push=push)
        return found.url, trusted

    monkeypatch.setenv("LOCALRUN_REGISTRY", "http://127.0.0.1:5999")  # the owner's library
    assert where("keeper") == ("http://127.0.0.1:5999", True)  # with the owner's login
    assert where("8.8.8.8:5000/a/b") == ("https://8.8.8.8:5000", False)  # public: anonymous
    assert where("docker.io/ai/smollm2") == (hosts.DOCKER_API, False)  # whatever DNS says
    unlisted = ["127.0.0.1:5000", "localhost:5000", "10.0.0.8", "192.168.1.2:5000",
                "169.254.169.254", "100.64.0.1", "2130706433:5000", "nowhere.invalid"]  # fmt: skip
    for host in unlisted:
        with pytest.raises(ForbiddenError, match="does not pull from"):
            where(f"{host}/a/b")
    for pushed in ("keeper", "8.8.8.8:5000/a/b", "docker.io/me/model"):
        with pytest.raises(ForbiddenError, match="not for API clients"):
            where(pushed, push=True)

    monkeypatch.setenv("LOCALRUN_API_REGISTRIES", "127.0.0.1:5000, Registry.Example.com")
    assert where("127.0.0.1:5000/a/b", push=True) == ("http://127.0.0.1:5000", True)
    assert where("registry.example.com/a/b", push=True) == ("https://registry.example.com", True)
    with pytest.raises(ForbiddenError):  # another port is another service
        where("127.0.0.1:5001/a/b")
    # A client's `insecure` never turns HTTPS off; the user's own does, anywhere.
    monkeypatch.setenv("LOCALRUN_API_REGISTRIES", "10.0.0.8")
    assert (
        where("10.0.0.8/a/b", reach=hosts.Reach(client=True, insecure=True))[0]
        == "https://10.0.0.8"
    )
    assert (
        where("10.0.0.8/a/b", push=True, reach=hosts.Reach(insecure=True))[0] == "http://10.0.0.8"
    )


def test_offline_a_stored_name_answers_and_a_pull_names_the_host(
    cli: CLI, fake: FakeOllamaRegistry, tiny_model: Path, tmp_path: Path
) -> None:
    fake.add("library/keeper", "latest", CONFIG, _ollama_layers(tiny_model.read_bytes()))
    env = {"LOCALRUN_REGISTRY": fake.url}
    assert cli("pull", "keeper", env=env).code == 0
    fake.close()
    offline = {"LOCALRUN_REGISTRY": "http://127.0.0.1:9"}
    answered = cli("run", "keeper", "-p", "num_predict=4", "Hello", env=offline)
    assert answered.code == 0, answered.stderr
    assert_one_line_error(cli("pull", "other", env=offline), "cannot reach 127.0.0.1:9")
    assert_one_line_error(cli("pull", "other", env={"LOCALRUN_REGISTRY": "off"}), "not found")
    fake.errors.clear()


# -- hostile registries, round five (issue 76) ----------------------------------------------------

BOMB = 256 << 20  # bytes that a few hundred of gzip-in-gzip inflate to (httpx: in one piece)


def _answers(url: str, op: str, model: str) -> list[dict[str, object]]:
    """The NDJSON lines of a streamed /api/pull (or push) of `model` through the server."""
    body = {"model": model, "stream": True}
    with httpx.stream("POST", f"{url}/api/{op}", json=body, timeout=120) as answer:
        assert answer.status_code == 200, answer.read()
        return [json.loads(line) for line in answer.iter_lines() if line]


class _JobPeaks:
    """The peak resident memory (VmHWM) of each job process this process starts, read from
    /proc every few milliseconds while the block runs (Linux)."""

    def __init__(self) -> None:
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> _JobPeaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _watch(self) -> None:
        me = str(os.getpid())
        while not self._stop.is_set():
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                try:
                    status = Path(entry.path, "status").read_text()
                    fields = dict(line.split(":", 1) for line in status.splitlines())
                    if fields["PPid"].strip() != me:
                        continue
                    if (
                        b"localrun.server.ollama.jobs"
                        not in Path(entry.path, "cmdline").read_bytes()
                    ):
                        continue
                    peak = int(fields["VmHWM"].split()[0]) << 10
                except (OSError, KeyError, ValueError):
                    continue
                self.peaks[int(entry.name)] = max(self.peaks.get(int(entry.name), 0), peak)
            self._stop.wait(0.005)


def _measured(args: list[str], env: dict[str, str]) -> tuple[int, str, int]:
    """`localrun ARGS` run as a command: its exit status, stderr and peak resident memory
    (its VmHWM, read every few milliseconds while it runs). Not wait4's ru_maxrss: Linux
    carries the high-water mark over exec, so a command forked from this process (hundreds
    of MB once earlier tests loaded models) was charged this process's memory."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "localrun", *args],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak = [0]

    def watch() -> None:
        status = Path(f"/proc/{proc.pid}/status")
        while proc.poll() is None:
            with contextlib.suppress(OSError, KeyError, ValueError):
                fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
                peak[0] = max(peak[0], int(fields["VmHWM"].split()[0]) << 10)
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert proc.stderr is not None
    stderr = proc.stderr.read()
    proc.wait()
    watcher.join()
    return proc.returncode, stderr, peak[0]


def test_a_body_is_decoded_a_step_at_a_time_within_its_bound() -> None:
    data = os.urandom(2000) + b"lighthouse " * 40000
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)  # deflate without zlib's header
    cases = {
        "gzip": gzip.compress(data),
        "deflate": zlib.compress(data),
        "deflate ": raw.compress(data) + raw.flush(),
        "gzip, deflate": zlib.compress(gzip.compress(data)),
        "identity, gzip": gzip.compress(data),
    }
    for header, body in cases.items():
        applied = bodies.codings(httpx.Headers({"Content-Encoding": header}), "a body")
        pieces = [body[i : i + 1000] for i in range(0, len(body), 1000)]  # as a socket gives
        out = list(bodies.decoded(iter(pieces), applied, len(data), "a body"))
        assert b"".join(out) == data and max(len(piece) for piece in out) <= bodies.STEP
        with pytest.raises(DownloadError, match="at most"):
            list(bodies.decoded(iter(pieces), applied, len(data) - 1, "a body"))
    for header, said in (("br", "'br' encoding"), ("gzip, gzip, gzip", "3 layers")):
        with pytest.raises(DownloadError, match=said):
            bodies.codings(httpx.Headers({"Content-Encoding": header}), "a body")
    for body, said in ((gzip.compress(data)[:-9], "ends before"), (b"<html>", "does not decode")):
        with pytest.raises(DownloadError, match=said):
            list(bodies.decoded(iter([body]), ["gzip"], len(data), "a body"))
    # A chain of what inflates to 256 MB: refused having made its bound and a step, no more.
    made = []
    bomb = registries.encoded(BOMB, ("gzip", "gzip"))
    with pytest.raises(DownloadError, match="at most"):
        for piece in bodies.decoded(iter([bomb]), ["gzip", "gzip"], 1 << 20, "a body"):
            made.append(len(piece))
    assert sum(made) <= (1 << 20) + bodies.STEP


@pytest.mark.parametrize("where", ["manifest", "error", "token"])
def test_a_gzip_chain_from_a_registry_is_refused_before_it_inflates(
    where: str, fake: FakeOllamaRegistry, store: Store
) -> None:
    """A manifest, an error body or a token answer of a few hundred bytes in `gzip, gzip`
    that httpx inflated to 256 MB in one piece (3 GB in the issue): what Python allocates
    stays within the manifest's bound."""
    fake.bomb, fake.bomb_in = BOMB, where
    fake.token = "granted" if where == "token" else None
    tracemalloc.start()
    try:
        with pytest.raises(LocalrunError) as refused:
            registry.pull(store, names.parse("keeper"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < oci.MAX_MANIFEST * 4, f"{peak >> 20} MB allocated at the peak"
    said = str(refused.value)
    assert "\n" not in said
    if where == "error":  # the 404 alone says it: the body that would not fit is left unread
        assert isinstance(refused.value, ModelNotFoundError)
    else:
        assert isinstance(refused.value, DownloadError) and "at most" in said, said


def test_a_gzip_chain_keeps_the_cli_and_the_servers_pull_job_small(
    fake: FakeOllamaRegistry, served: tuple[str, Store]
) -> None:
    fake.bomb = BOMB
    code, stderr, peak = _measured(["pull", "keeper"], {"LOCALRUN_REGISTRY": fake.url})
    assert code != 0 and "Traceback" not in stderr and "at most" in stderr, stderr
    assert peak < 200 << 20, f"localrun pull peaked at {peak >> 20} MB"
    with _JobPeaks() as jobs_seen:
        answers = _answers(served[0], "pull", "keeper")
    assert "at most" in str(answers[-1]["error"]) and answers[-1]["code"] == "download_error"
    assert jobs_seen.peaks and max(jobs_seen.peaks.values()) < 200 << 20, jobs_seen.peaks


def test_a_pull_job_past_its_memory_cap_ends_in_one_line(
    fake: FakeOllamaRegistry, served: tuple[str, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cap itself, shown with a body the pull reads up to 4 MB of (a manifest of a
    million layers) and a cap of 3 MB: the job stops with one line, the server goes on."""
    fake.models[("library/keeper", "latest")] = registries.MILLION
    monkeypatch.setenv("LOCALRUN_PULL_MAX_MEMORY", str(3 << 20))
    answers = _answers(served[0], "pull", "keeper")
    assert answers[-1]["code"] == "hub_error", answers[-1]
    assert "memory cap (3 MiB above its start)" in str(answers[-1]["error"])
    assert "LOCALRUN_PULL_MAX_MEMORY" in str(answers[-1]["hint"])
    monkeypatch.delenv("LOCALRUN_PULL_MAX_MEMORY")
    answers = _answers(served[0], "pull", "keeper")
    assert answers[-1]["code"] == "download_error" and "at most" in str(answers[-1]["error"])


def test_a_realm_is_held_to_the_rules_of_a_redirect() -> None:
    """Where each registry people use sends its token service, and what localrun does:
    True sends the login there, False asks for a token anonymously, a string refuses."""
    cases = {
        ("https://registry-1.docker.io", "https://auth.docker.io/token"): True,
        ("https://registry.gitlab.com", "https://gitlab.com/jwt/auth"): True,
        ("https://registry.example.com", "https://gitlab.example.com/jwt/auth"): True,
        ("https://ghcr.io", "https://ghcr.io/token"): True,
        ("https://quay.io", "https://quay.io/v2/auth"): True,
        ("https://team.azurecr.io", "https://team.azurecr.io/oauth2/token"): True,
        ("https://us-docker.pkg.dev", "https://us-docker.pkg.dev/v2/token"): True,
        ("http://localhost:5000", "http://localhost:5000/auth"): True,
        ("http://10.0.0.5:5000", "http://10.0.0.5:5000/auth"): True,
        # Over plain HTTP another port is another service (issue 76: an admin API beside the
        # registry); over HTTPS the site is the registry's (self-hosted GitLab: :5050 -> 443).
        ("http://localhost:5000", "http://localhost:5001/auth"): False,
        ("http://10.0.0.5:5000", "http://10.0.0.5:8080/admin"): False,
        ("https://gitlab.example.com:5050", "https://gitlab.example.com/jwt/auth"): True,
        ("https://registry.example.com", "https://registry.example.com:8443/token"): True,
        ("https://registry.ollama.ai", "https://ollama.com/token"): False,
        ("https://ghcr.io", "https://tokens.example/ghcr"): False,
        ("http://127.0.0.1:5000", "http://localhost:5001/auth"): False,
        ("https://registry.example.com", "http://registry.example.com/token"): "not HTTPS",
        ("https://registry.example.com", "http://127.0.0.1:8/admin"): "not HTTPS",
        ("http://registry.example.com", "http://127.0.0.1:8/admin"): "private address",
        ("https://registry.example.com", "https://127.0.0.1:8/admin"): "private address",
        ("https://registry.example.com", "https://10.1.2.3/admin"): "private address",
        ("https://registry.example.com", "https://[::1]:8/admin"): "private address",
        ("https://registry.example.com", "file:///etc/passwd"): "not an http",
        ("https://registry.example.com", "https://[::1/admin"): "not an http",
    }
    for (url, realm), expected in cases.items():
        where = hosts.Target(urlsplit(url).netloc, url, "team/model", "latest")
        if isinstance(expected, bool):
            assert challenge.token_service(where, realm) is expected, (url, realm)
        else:
            with pytest.raises(HubAuthError, match=expected):
                challenge.token_service(where, realm)


def test_a_public_registrys_realm_on_this_machine_is_never_asked(
    fake: FakeOllamaRegistry, store: Store, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SSRF of the issue, end to end: a registry reached by a public name (through a
    proxy that stands in for DNS) names a token service on this machine's loopback; nothing
    is sent there, the user's login least of all."""
    fake.token = "granted"
    fake.add("library/keeper", "latest", CONFIG, _ollama_layers(tiny_model.read_bytes()))
    admin = FakeOllamaRegistry()
    fake.realm = f"{admin.url}/admin/delete-all?confirm=yes"
    name = "registry.example/library/keeper"
    monkeypatch.setenv("LOCALRUN_INSECURE_REGISTRIES", "registry.example")
    monkeypatch.setenv("LOCALRUN_REGISTRY_AUTH", "registry.example=ann:s3cret")
    for variable in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(variable, raising=False)
    public = {
        "registry.example": fake.url.removeprefix("http://"),
        "storage.example": fake.storage_url.removeprefix("http://"),
    }
    fake.storage_url = "http://storage.example"
    try:
        with ForwardProxy(public) as proxy:
            monkeypatch.setenv("HTTP_PROXY", proxy.url)
            with pytest.raises(HubAuthError, match="private address") as refused:
                registry.pull(store, names.parse(name))
            assert "\n" not in str(refused.value)
            assert fake.requests and admin.requests == []
            # Its own token service, by its public name: asked, with the login.
            fake.realm = "http://registry.example/token"
            registry.pull(store, names.parse(name))
            sent = [auth for _, path, auth in fake.requests if path == "/token"]
            assert sent == ["Basic " + registries.basic("ann", "s3cret")]
    finally:
        admin.close()


def test_the_login_goes_to_no_token_service_off_the_registrys_site(
    fake: FakeOllamaRegistry, store: Store, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.token = "granted"
    fake.add("library/keeper", "latest", CONFIG, _ollama_layers(tiny_model.read_bytes()))
    host = fake.url.removeprefix("http://")
    fake.realm = f"http://localhost:{fake.url.rsplit(':', 1)[1]}/token"  # another host's name
    monkeypatch.setenv("LOCALRUN_REGISTRY_AUTH", f"{host}=ann:s3cret")
    registry.pull(store, names.parse("keeper"))  # a public repository: anonymous is enough
    assert [auth for _, path, auth in fake.requests if path == "/token"] == [""]


def test_what_a_registry_sends_never_reaches_httpx_unchecked(
    fake: FakeOllamaRegistry, store: Store, tiny_model: Path, served: tuple[str, Store],
    cli: CLI,
) -> None:  # fmt: skip
    """A token that is not one (a character outside ASCII: httpx's UnicodeEncodeError ended
    the pull job as 'the pull job failed'), a redirect to a host IDNA refuses, a Retry-After
    of '²' (a digit to str.isdigit, not to float()): each a one-line registry error."""
    gguf = tiny_model.read_bytes()
    fake.add("library/keeper", "latest", CONFIG, _ollama_layers(gguf))
    fake.token = "t\u00f6ken"
    assert_one_line_error(cli("pull", "keeper", env={"LOCALRUN_REGISTRY": fake.url}),
                          "gave a token that is not one")  # fmt: skip
    answers = _answers(served[0], "pull", "keeper")
    assert answers[-1]["code"] == "hub_auth", answers[-1]
    assert "job failed" not in str(answers[-1]["error"])
    fake.token = "x" * (challenge.MAX_TOKEN + 1)
    with pytest.raises(HubAuthError, match="not one"):
        registry.pull(store, names.parse("keeper"))

    fake.token, fake.redirect_to = None, "http://a..b/blob"
    with pytest.raises(DownloadError, match="cannot be sent") as refused:
        registry.pull(store, names.parse("keeper"))
    assert "\n" not in str(refused.value)

    fake.redirect_to, fake.rate_limited, fake.retry_after = None, 1, "\u00b2"
    registry.pull(store, names.parse("keeper"))  # '²' is no number: a short pause, then on
    assert store.exists(names.parse("keeper"))


def test_a_registry_that_asks_to_wait_long_is_refused_at_once_saying_when(
    fake: FakeOllamaRegistry, store: Store, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf = tiny_model.read_bytes()
    fake.add("library/keeper", "latest", CONFIG, _ollama_layers(gguf))
    fake.retry_after = "999999"
    for where in ("rate_limited", "storage_limited"):  # the registry's 429, the storage's
        setattr(fake, where, 1)
        started = time.monotonic()
        with pytest.raises(HubError) as refused:
            registry.pull(store, names.parse("keeper"))
        assert time.monotonic() - started < 5
        assert "asks to wait 12 days" in str(refused.value), refused.value
        assert refused.value.hint and "try again in 12 days" in refused.value.hint
        setattr(fake, where, 0)
    # Waits it would take one at a time count together: past the budget, refused as well.
    monkeypatch.setattr(oci, "RETRIES", 3)
    monkeypatch.setattr(oci, "RETRY_AFTER_BUDGET", 1.5)
    fake.rate_limited, fake.retry_after = 3, "1"
    started = time.monotonic()
    with pytest.raises(HubError, match="after 1 s of waiting already"):
        registry.pull(store, names.parse("keeper"))
    assert time.monotonic() - started < 4
    fake.rate_limited = 1
    registry.pull(store, names.parse("keeper"))  # and a short wait is still waited
    assert store.exists(names.parse("keeper"))


def test_a_stalled_registry_never_holds_another_clients_create(
    fake: FakeOllamaRegistry, served: tuple[str, Store], tiny_model: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Pulls and pushes take turns in a line of their own: with one turn a line, a pull that
    a registry holds (as two held both turns for 45 s) leaves a create to run at once."""
    from support.server import add_model

    monkeypatch.setenv("LOCALRUN_MAX_JOBS", "1")
    url, store = served
    add_model(store, "base", tiny_model)
    fake.add("library/keeper", "latest", CONFIG, _ollama_layers(tiny_model.read_bytes()))
    fake.stall = threading.Event()
    release = threading.Timer(30, fake.stall.set)  # what the old line made a create wait for
    release.start()
    pulled: list[int] = []
    pulls = [
        threading.Thread(target=lambda: pulled.append(httpx.post(
            f"{url}/api/pull", json={"model": "keeper", "stream": False}, timeout=120
        ).status_code)) for _ in range(2)
    ]  # fmt: skip
    try:
        for thread in pulls:
            thread.start()
        deadline = time.monotonic() + 30
        while not any(path.endswith("/manifests/latest") for _, path, _ in fake.requests):
            assert time.monotonic() < deadline, "no pull reached the registry"
            time.sleep(0.05)
        started = time.monotonic()
        body = {"model": "lamp", "from": "base", "system": "You keep the lamp.", "stream": False}
        created = httpx.post(f"{url}/api/create", json=body, timeout=120)
        took = time.monotonic() - started
        assert created.status_code == 200, created.text
        assert took < 15, f"the create waited {took:.1f} s"
    finally:
        fake.stall.set()
        release.cancel()
        for thread in pulls:
            thread.join(60)
    assert pulled == [200, 200]


def _interrupted(fake: FakeOllamaRegistry, store: Store, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A pull of `keeper` cut off after its first three pieces: the partial download's data."""
    monkeypatch.setattr(registry, "LOCAL_STREAMS", 1)  # pieces in order: the first come whole
    original = ranges._Job._piece
    pieces = {"left": 3}

    def flaky(job: ranges._Job, fd: int, index: int) -> None:
        fake.cut_after = None if pieces["left"] > 0 else 40 << 10
        pieces["left"] -= 1
        original(job, fd, index)

    with monkeypatch.context() as patched:
        patched.setattr(ranges._Job, "_piece", flaky)
        with pytest.raises(DownloadError, match="run the pull again to resume"):
            registry.pull(store, names.parse("keeper"))
    fake.cut_after, fake.ranges = None, []
    state = next((store.root / "partial").glob("*/state.json"))
    assert json.loads(state.read_text())["whole"] == 3
    return state.parent / "data"


def test_a_resumed_pull_whose_kept_bytes_were_damaged_here_blames_no_registry(
    fake: FakeOllamaRegistry, store: Store, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf = tiny_model.read_bytes()
    fake.add("library/keeper", "latest", CONFIG, _ollama_layers(gguf))
    data = _interrupted(fake, store, monkeypatch)
    with data.open("r+b") as damaged:  # this disk's fault: a byte of a recorded piece
        damaged.seek(1000)
        damaged.write(bytes([gguf[1000] ^ 0xFF]))
    registry.pull(store, names.parse("keeper"))  # the kept pieces discarded, all fetched anew
    assert store.blob_path(digest_of(gguf)).read_bytes() == gguf
    assert min(start for start, _ in fake.sent(gguf)) == 0

    # The registry's fault: blamed, having been given a fresh try.
    other = Store(store.root.parent / "other")
    _interrupted(fake, other, monkeypatch)
    fake.blobs[digest_of(gguf)] = gguf[:-1] + b"!"
    with pytest.raises(DownloadError) as refused:
        registry.pull(other, names.parse("keeper"))
    assert "the registry sent bytes" in str(refused.value)
    assert "also when fetched whole again" in str(refused.value)


def test_pulls_of_one_blob_at_once_leave_no_lock_behind(
    fake: FakeOllamaRegistry, store: Store, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf = tiny_model.read_bytes()
    fake.add("library/keeper", "latest", CONFIG, _ollama_layers(gguf))
    partial = store.root / "partial"
    # The leak, in the order it took: a second pull that looked for the blob before the first
    # stored it comes for the lock after the first removed it (and finds the blob).
    late_inside, first_done = threading.Event(), threading.Event()
    original = registry._blob

    def late(store_: Store, part: registry.Part, what: str) -> ranges.Blob:
        if what and threading.current_thread().name == "late":
            late_inside.set()  # it looked, and the blob was not there yet
            first_done.wait(30)
        return original(store_, part, what)

    monkeypatch.setattr(registry, "_blob", late)
    second = threading.Thread(
        target=registry.pull, args=(store, names.parse("keeper")), name="late"
    )
    second.start()
    assert late_inside.wait(30)
    registry.pull(store, names.parse("keeper"))
    first_done.set()
    second.join(60)
    assert list(partial.iterdir()) == []
    # Six at once, as the issue ran them.
    monkeypatch.setattr(registry, "_blob", original)
    six = Store(store.root.parent / "six")
    errors: list[BaseException] = []

    def one() -> None:
        try:
            registry.pull(six, names.parse("keeper"))
        except BaseException as exc:  # said by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == [] and six.exists(names.parse("keeper"))
    assert list((six.root / "partial").iterdir()) == []
    # One left by a pull that was killed goes with the store's own clean-up.
    (six.root / "partial" / "abc.lock").write_bytes(b"")
    six.prune()
    assert list((six.root / "partial").iterdir()) == []


# -- any OCI registry: the distribution server ----------------------------------------------------


@needs_registry
def test_push_then_pull_through_a_registry_in_ollamas_format(
    distribution: DockerRegistry, store: Store, tmp_path: Path, tiny_model: Path, cli: CLI
) -> None:
    text = (
        f'FROM {tiny_model}\nTEMPLATE """{TEMPLATE}"""\nSYSTEM "You keep the lighthouse."\n'
        'PARAMETER temperature 0.25\nPARAMETER stop <|user|>\nLICENSE "The license"\n'
        "MESSAGE user hi\nMESSAGE assistant ho\n"
    )
    create.create(store, names.parse("keeper"), modelfile.parse(text), tmp_path)
    target = names.parse(f"{distribution.host}/me/keeper:v1")
    store.copy(names.parse("keeper"), target)
    push.push(store, target)

    raw = distribution.manifest("me/keeper", "v1")  # what `ollama pull` would read
    assert raw["mediaType"] == DOCKER_MANIFEST
    assert raw["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    kinds = [layer["mediaType"].removeprefix(OLLAMA) for layer in raw["layers"]]
    assert sorted(kinds) == ["license", "messages", "model", "params", "system", "template"]
    ollama_config = json.loads(distribution.blob("me/keeper", raw["config"]["digest"]))
    assert ollama_config["model_format"] == "gguf" and ollama_config["model_family"] == "llama"

    # A second push sends no blob again; a fresh store pulls the same model back and runs it.
    events: list[create.Event] = []
    push.push(store, target, events.append)
    blobs = [e for e in events if e.status.startswith("pushing ") and e.digest]
    assert blobs and all("already there" in e.status for e in blobs)
    assert not [e for e in events if e.completed]  # no byte sent
    other = tmp_path / "other-home"
    pulled = cli("pull", str(target), env={"LOCALRUN_HOME": str(other)})
    assert pulled.code == 0, pulled.stderr
    shown = cli("show", str(target), "--modelfile", env={"LOCALRUN_HOME": str(other)})
    for line in ("SYSTEM", "You keep the lighthouse.", "PARAMETER temperature 0.25",
                 "<|user|>", "MESSAGE user hi", "The license"):  # fmt: skip
        assert line in shown.stdout, shown.stdout
    again = Store(other / "models").read_manifest(target)
    assert again.of_kind("model") == store.read_manifest(target).of_kind("model")
    ran = cli("run", str(target), "-p", "num_predict=4", "Hello", env={"LOCALRUN_HOME": str(other)})
    assert ran.code == 0, ran.stderr


@needs_registry
def test_ollamas_client_pushes_through_the_server(
    distribution: DockerRegistry,
    tiny_model: Path,
    served: tuple[str, Store],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ollama

    from support.server import add_model

    monkeypatch.setenv("LOCALRUN_API_REGISTRIES", distribution.host)  # the owner lists it
    url, store = served
    name = f"{distribution.host}/client/pushed:v1"
    add_model(store, name, tiny_model, 'SYSTEM "pushed by a client"')
    updates = list(ollama.Client(host=url).push(name, insecure=True, stream=True))
    assert updates[-1].status == "success"
    raw = distribution.manifest("client/pushed", "v1")
    system = next(x for x in raw["layers"] if x["mediaType"] == OLLAMA + "system")
    assert distribution.blob("client/pushed", system["digest"]) == b"pushed by a client"
    with pytest.raises(ollama.ResponseError):
        ollama.Client(host=url).push(f"{distribution.host}/client/absent:v1")


@needs_registry
def test_cp_pulls_a_registry_name_and_pushes_a_copy(
    distribution: DockerRegistry, cli: CLI, tiny_model: Path, tmp_path: Path
) -> None:
    (tmp_path / "Modelfile").write_text(f"FROM {tiny_model}\nSYSTEM lamp\n")
    assert cli("create", "lamp", "-f", str(tmp_path / "Modelfile")).code == 0
    remote = f"{distribution.host}/team/lamp:v3"
    copied = cli("cp", "lamp", remote, "--push")
    assert copied.code == 0, copied.stderr
    assert distribution.manifest("team/lamp", "v3")["layers"]
    elsewhere = {"LOCALRUN_HOME": str(tmp_path / "elsewhere")}
    back = cli("cp", remote, "lamp-here", env=elsewhere)
    assert back.code == 0, back.stderr
    assert "lamp-here:latest" in cli("list", env=elsewhere).stdout


@needs_registry
def test_docker_model_runners_format_is_pulled_with_its_template_and_context(
    distribution: DockerRegistry, store: Store, tiny_model: Path
) -> None:
    gguf = tiny_model.read_bytes()
    distribution.upload(
        "ai/tiny",
        "f32",
        ("application/vnd.docker.ai.model.config.v0.1+json", registries.docker_config(gguf, 2048)),
        [
            ("application/vnd.docker.ai.gguf.v3", gguf),
            ("application/vnd.docker.ai.license", b"Apache-2.0 text"),
            ("application/vnd.docker.ai.chat.template.jinja", JINJA.encode()),
        ],
    )
    name = names.parse(f"{distribution.host}/ai/tiny:f32")
    registry.pull(store, name)
    manifest = store.read_manifest(name)
    assert store.read_blob(manifest.of_kind("template")[0].digest).decode() == JINJA
    assert store.read_blob(manifest.of_kind("license")[0].digest) == b"Apache-2.0 text"
    assert json.loads(store.read_blob(manifest.of_kind("params")[0].digest)) == {"num_ctx": 2048}
    config = json.loads(store.read_blob(manifest.config.digest))
    assert config["source"]["packaging"] == "docker"
    assert config["source"]["config"]["quantization"] == "F32"
    with pytest.raises(ModelNotFoundError) as missing:
        registry.pull(store, names.parse(f"{distribution.host}/ai/tiny:nope"))
    assert "has no such model (MANIFEST_UNKNOWN" in str(missing.value.hint)


@needs_registry
def test_a_split_model_in_dockers_format_comes_whole_and_answers(
    distribution: DockerRegistry, tiny_model: Path, tmp_path: Path, cli: CLI, store: Store
) -> None:
    parts = write_split(tiny_model, tmp_path / "split", "tiny", parts=3)
    gguf = [part.read_bytes() for part in parts]
    distribution.upload(
        "ai/split",
        "latest",
        ("application/vnd.docker.ai.model.config.v0.1+json", registries.docker_config(gguf[0], 0)),
        [("application/vnd.docker.ai.gguf.v3", data) for data in gguf],
    )
    name = f"{distribution.host}/ai/split"
    ran = cli("run", name, "-p", "num_predict=4", "Hello")
    assert ran.code == 0, ran.stderr
    manifest = store.read_manifest(names.parse(name))
    assert [layer.digest for layer in manifest.of_kind("model")] == [digest_of(d) for d in gguf]


@needs_registry
def test_a_registry_behind_a_login_takes_it_from_the_environment_or_dockers_file(
    tmp_path: Path, store: Store, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    locked = DockerRegistry(tmp_path / "locked", users={"ann": "s3cret"})
    try:
        monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker"))
        create.create(store, names.parse("lamp"), modelfile.parse(f"FROM {tiny_model}\n"), tmp_path)
        name = names.parse(f"{locked.host}/ann/lamp:latest")
        store.copy(names.parse("lamp"), name)
        with pytest.raises(HubAuthError, match="asks for a login"):
            push.push(store, name)
        monkeypatch.setenv("LOCALRUN_REGISTRY_AUTH", f"{locked.host}=ann:wrong")
        with pytest.raises(HubAuthError, match="refused the login"):
            push.push(store, name)
        monkeypatch.setenv("LOCALRUN_REGISTRY_AUTH", f"{locked.host}=ann:s3cret")
        push.push(store, name)
        # Docker's credential file, as `docker login` leaves it.
        monkeypatch.delenv("LOCALRUN_REGISTRY_AUTH")
        (tmp_path / "docker").mkdir()
        auths = {"auths": {locked.host: {"auth": registries.basic("ann", "s3cret")}}}
        (tmp_path / "docker" / "config.json").write_text(json.dumps(auths))
        monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
        fresh = Store(tmp_path / "fresh")
        registry.pull(fresh, name)
        assert fresh.exists(name)
        # A credential helper (`docker-credential-<name> get`), as Docker Desktop sets up.
        helper = tmp_path / "bin" / "docker-credential-tests"
        helper.parent.mkdir()
        helper.write_text(
            "#!/bin/sh\nread server\n"
            f'[ "$server" = "{locked.host}" ] || exit 1\n'
            'echo \'{"ServerURL": "x", "Username": "ann", "Secret": "s3cret"}\'\n'
        )
        helper.chmod(0o755)
        monkeypatch.setenv("PATH", f"{helper.parent}:{os.environ['PATH']}")
        helpers = {"auths": {}, "credHelpers": {locked.host: "tests"}}
        (tmp_path / "docker" / "config.json").write_text(json.dumps(helpers))
        other = Store(tmp_path / "other")
        registry.pull(other, name)
        assert other.exists(name)
    finally:
        locked.close()
