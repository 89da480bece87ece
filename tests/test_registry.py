"""`pull`, `push` and `cp` against registries: the real distribution server (Debian's
`docker-registry`, holding models pushed in Ollama's and Docker Model Runner's formats) and a
server that behaves as registry.ollama.ai does where it differs (tests/registries.py): its
redirect to object storage on another host, its token service, its rate limit. Blobs come in
parallel ranges, resume, are verified and deduplicated; hostile registries are refused in one
line with nothing half-written in the store.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import registries
from conftest import CLI, assert_one_line_error
from registries import DOCKER_MANIFEST, OLLAMA, DockerRegistry, FakeOllamaRegistry, digest_of
from testmodels.files import write_split

from localrun.errors import DownloadError, HubAuthError, LocalrunError, ModelNotFoundError
from localrun.recipes import create, modelfile
from localrun.sources import hosts, obtain, oci, push, ranges, registry
from localrun.store import names, reference
from localrun.store.models import Store

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
    from test_server import LiveServer

    from localrun.scheduler import Scheduler

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
    digest = obtain.from_registry(store, reference.resolve("keeper"), events.append)

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
    assert obtain.from_registry(store, reference.resolve("keeper")) == digest
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
    with pytest.raises(ollama.ResponseError) as missing:
        client.pull("no-such-model")
    assert "no-such-model" in str(missing.value)


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
    distribution: DockerRegistry, tiny_model: Path, served: tuple[str, Store]
) -> None:
    import ollama
    from test_server import add_model

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
