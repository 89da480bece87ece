"""`localrun launch`: coding agents pointed at the real server. The agents are stand-ins (they
are the layer above what is tested): small programs on PATH that do what each agent does with
the environment and arguments it is given, through the official clients, so a wrong URL, key,
model or wire API fails here as it would in the real agent."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from localrun.store.local import Store

from support import free_port
from support.cli import CLI, assert_one_line_error
from support.serve import Serve
from support.server import add_model

pytestmark = [pytest.mark.server, pytest.mark.model]

# What the model was loaded with for the agent's request (/api/ps).
PS = """
import httpx
def ps_context(url, key):
    headers = {"Authorization": f"Bearer {key}"}
    running = httpx.get(url.removesuffix("/v1") + "/api/ps", headers=headers).json()["models"]
    return " ".join(f"{m['name']}@{m['context_length']}" for m in running)
"""

CLAUDE = (
    PS
    + """
import os, sys, anthropic
args = sys.argv[1:]
model = args[args.index("--model") + 1]
assert os.environ["ANTHROPIC_API_KEY"] == ""
client = anthropic.Anthropic(
    base_url=os.environ["ANTHROPIC_BASE_URL"], auth_token=os.environ["ANTHROPIC_AUTH_TOKEN"],
    api_key=None,
)
# Claude Code asks its small fast model for titles and the like: it must be the chosen one.
for name in (model, os.environ["ANTHROPIC_DEFAULT_HAIKU_MODEL"]):
    reply = client.messages.create(
        model=name, max_tokens=3, messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.usage.output_tokens > 0
# It is told the window, and not to think with a model that cannot.
assert os.environ["CLAUDE_CODE_MAX_CONTEXT_TOKENS"] == "65536"
assert os.environ["CLAUDE_CODE_DISABLE_THINKING"] == "1"
assert os.environ["CLAUDE_CODE_ATTRIBUTION_HEADER"] == "0"
loaded = ps_context(os.environ["ANTHROPIC_BASE_URL"], os.environ["ANTHROPIC_AUTH_TOKEN"])
print("claude answered", model, *args, loaded)
sys.exit(3)
"""
)

CODEX = (
    PS
    + """
import json, os, sys, tomllib, openai
args = sys.argv[1:]
config = {}
while "-c" in args:
    i = args.index("-c")
    key, _, value = args[i + 1].partition("=")
    node = config
    *path, last = key.split(".")
    for part in path:
        node = node.setdefault(part, {})
    node[last] = tomllib.loads(f"v = {value}")["v"]
    del args[i : i + 2]
model = args[args.index("-m") + 1]
provider = config["model_providers"][config["model_provider"]]
assert provider["wire_api"] == "responses"
client = openai.OpenAI(base_url=provider["base_url"], api_key=os.environ[provider["env_key"]])
reply = client.responses.create(model=model, input="hi", max_output_tokens=3)
assert reply.usage.output_tokens > 0
assert config["model_context_window"] == 32768 and config["web_search"] == "disabled"
# Its catalog of the one model: apply_patch as the free-form tool, Codex's instructions.
(entry,) = json.loads(open(config["model_catalog_json"]).read())["models"]
assert entry["slug"] == model and entry["apply_patch_tool_type"] == "freeform"
assert entry["base_instructions"].startswith("You are a coding agent running in the Codex CLI")
print("codex answered", model, ps_context(provider["base_url"], os.environ[provider["env_key"]]))
"""
)

OPENCODE = (
    PS
    + """
import json, os, openai
config = json.loads(os.environ["OPENCODE_CONFIG_CONTENT"])
provider_id, model = config["model"].split("/", 1)
provider = config["provider"][provider_id]
assert provider["npm"] == "@ai-sdk/openai-compatible" and model in provider["models"]
options = provider["options"]
client = openai.OpenAI(base_url=options["baseURL"], api_key=options["apiKey"])
reply = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=3
)
assert reply.usage.completion_tokens > 0
assert provider["models"][model]["limit"] == {"context": 32768, "output": 4096}
print("opencode answered", model, ps_context(options["baseURL"], options["apiKey"]))
"""
)

AIDER = (
    PS
    + """
import json, os, sys, ollama
args = sys.argv[1:]
name = args[args.index("--model") + 1]
assert name.startswith("ollama_chat/")
model = name.removeprefix("ollama_chat/")
settings = json.loads(open(args[args.index("--model-settings-file") + 1]).read())
num_ctx = settings[0]["extra_params"]["num_ctx"]
metadata = json.loads(open(args[args.index("--model-metadata-file") + 1]).read())
assert metadata[name]["max_input_tokens"] + metadata[name]["max_output_tokens"] == num_ctx
base = os.environ["OLLAMA_API_BASE"]
key = os.environ["OLLAMA_API_KEY"]
client = ollama.Client(host=base, headers={"Authorization": "Bearer " + key})
# litellm reads the window from /api/show {"name": ...}, then chats with options.num_ctx.
assert client._client.post("/api/show", json={"name": model}).status_code == 200
options = {"num_ctx": num_ctx, "num_predict": 3}
reply = client.chat(model, [{"role": "user", "content": "hi"}], options=options)
assert reply.eval_count > 0
print("aider answered", model, ps_context(base, key))
"""
)


@pytest.fixture
def agents(tmp_path: Path) -> Path:
    """A folder of stand-in agents, to put first on PATH."""
    folder = tmp_path / "agents"
    folder.mkdir()
    for name, body in (
        ("claude", CLAUDE),
        ("codex", CODEX),
        ("opencode", OPENCODE),
        ("aider", AIDER),
    ):
        program = folder / name
        program.write_text(f"#!{sys.executable}\n{body}")
        program.chmod(0o755)
    return folder


@pytest.fixture
def tiny_home(home: Path, tiny_long_model: Path, tiny_model: Path) -> Path:
    """`tiny`, trained (its header says) on more context than any agent wants; `small`,
    trained on 256 tokens."""
    add_model(Store(home / "models"), "tiny", tiny_long_model)
    add_model(Store(home / "models"), "small", tiny_model)
    return home


def _answers(address: str) -> bool:
    try:
        return httpx.get(f"http://{address}/api/version", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def running(tiny_home: Path) -> Iterator[Serve]:
    server = Serve(tiny_home)
    yield server
    server.kill()


def _env(agents: Path | None, address: str, **extra: str) -> dict[str, str]:
    path = os.environ.get("PATH", "")
    return {
        "PATH": f"{agents}{os.pathsep}{path}" if agents else "/nonexistent",
        "LOCALRUN_HOST": address,
        **extra,
    }


def test_launch_starts_a_server_for_the_agent_and_stops_it_after(
    cli: CLI, tiny_home: Path, agents: Path
) -> None:
    address = f"127.0.0.1:{free_port()}"
    result = cli("launch", "claude", "--model", "tiny", "--", "--resume", env=_env(agents, address))
    assert result.code == 3, result.stderr  # the agent's own exit status
    # A variant with the context Claude Code wants, which its request loaded.
    variant = "tiny:latest-ctx64k"
    assert result.stdout.strip() == (
        f"claude answered {variant} --model {variant} --resume {variant}@65536"
    )
    assert "Claude Code works with tiny:latest-ctx64k: tiny with a context of 65536" in (
        result.stderr
    )
    assert f"started localrun serve at http://{address}" in result.stderr
    assert (tiny_home / "logs" / "launch-serve.log").is_file()
    assert not _answers(address)  # stopped with the agent


@pytest.mark.parametrize(
    ("agent", "num_ctx"), [("codex", 32768), ("opencode", 32768), ("aider", 16384)]
)
def test_launch_uses_the_server_that_answers_and_leaves_it_running(
    cli: CLI, running: Serve, agents: Path, agent: str, num_ctx: int
) -> None:
    address = running.url.removeprefix("http://")
    result = cli("launch", agent, "-m", "tiny", env=_env(agents, address))
    assert result.code == 0, result.stderr
    variant = f"tiny:latest-ctx{num_ctx // 1024}k"
    assert result.stdout.strip() == f"{agent} answered {variant} {variant}@{num_ctx}"
    assert "started" not in result.stderr
    assert _answers(address)


def test_an_api_key_reaches_the_agent_and_is_never_printed(
    cli: CLI, tiny_home: Path, agents: Path
) -> None:
    key = "sk-local-key-0123456789"
    address = f"127.0.0.1:{free_port()}"
    server = Serve(tiny_home, env={"LOCALRUN_API_KEY": key, "LOCALRUN_HOST": address})
    try:
        env = _env(agents, address, LOCALRUN_API_KEY=key)
        result = cli("launch", "opencode", "-m", "tiny", env=env)
        assert result.code == 0, result.stderr
        shown = cli("launch", "opencode", "-m", "tiny", "--dry-run", env=env)
        assert key not in shown.stdout and "$LOCALRUN_API_KEY" in shown.stdout
    finally:
        server.kill()


def test_dry_run_prints_what_it_would_set_and_starts_nothing(cli: CLI, home: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    result = cli("launch", "claude", "--dry-run", "-m", "qwen3:0.6b", env=_env(None, address))
    assert result.code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert (
        lines[0]
        == f"# no server answers at http://{address}: `localrun serve` would be started there"
    )
    assert f"ANTHROPIC_BASE_URL=http://{address}" in lines
    assert "ANTHROPIC_DEFAULT_HAIKU_MODEL=qwen3:0.6b-ctx64k" in lines
    # Not in the store (nothing is pulled for a dry run): what the model holds is not known.
    assert lines[1] == (
        "# Claude Code works with qwen3:0.6b-ctx64k: qwen3:0.6b with a context of 65536 "
        "tokens (PARAMETER num_ctx 65536)"
    )
    assert lines[-1] == "claude --model qwen3:0.6b-ctx64k"
    assert not _answers(address)
    assert not (home / "models" / "manifests").exists()  # nothing pulled either
    codex = cli("launch", "codex", "--dry-run", "-m", "qwen3:0.6b", env=_env(None, address))
    assert f'model_providers.localrun.base_url="http://{address}/v1"' in codex.stdout
    opencode = cli("launch", "opencode", "--dry-run", "-m", "x", env=_env(None, address))
    content = opencode.stdout.splitlines()[2].split("=", 1)[1]
    assert json.loads(content.strip("'"))["model"] == "localrun/x:latest-ctx32k"
    aider = cli("launch", "aider", "--dry-run", "-m", "x", env=_env(None, address))
    assert '#       "name": "ollama_chat/x:latest-ctx16k",' in aider.stdout.splitlines()
    assert aider.stdout.splitlines()[-1].startswith("aider --model ollama_chat/x:latest-ctx16k")


def test_an_agent_that_is_not_installed_says_how_to_get_it(cli: CLI, tiny_home: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    result = cli("launch", "codex", "-m", "tiny", env=_env(None, address))
    assert_one_line_error(result, "Codex is not installed", "npm install -g @openai/codex")
    assert not _answers(address)


def test_bad_names_are_one_line(cli: CLI, running: Serve, agents: Path) -> None:
    env = _env(agents, running.url.removeprefix("http://"))
    assert_one_line_error(cli("launch", "cursor", "-m", "tiny", env=env), "cannot launch 'cursor'")
    assert_one_line_error(cli("launch", "claude", env=env), "--model NAME", "tiny:latest")
    assert_one_line_error(cli("launch", "claude", "-m", "tinny", env=env), "tinny")


def test_a_model_too_small_for_the_agent_is_refused_with_why(
    cli: CLI, running: Serve, agents: Path
) -> None:
    env = _env(agents, running.url.removeprefix("http://"))
    assert_one_line_error(
        cli("launch", "claude", "-m", "small", env=env),
        "small was trained on a context of 256 tokens, and Claude Code needs 40960",
        "--context 256",
    )
    assert_one_line_error(
        cli("launch", "codex", "-m", "small", "--context", "512", env=env),
        "--context 512 is more",
    )
    # Asked for outright, less than the agent needs goes ahead, warned.
    result = cli("launch", "aider", "-m", "small", "--context", "256", env=env)
    assert result.code == 0, result.stderr
    assert "warning: Aider needs a context of 4096 tokens" in result.stderr
    assert result.stdout.strip() == "aider answered small:latest-ctx256 small:latest-ctx256@256"


@pytest.mark.parametrize("agent", ["claude", "codex", "opencode", "aider"])
def test_dry_run_never_prints_a_key_that_quoting_respells(cli: CLI, agent: str) -> None:
    # The key was replaced in the printed text after shell or JSON quoting had changed how a
    # key with ' " or \ is spelled: the replace missed it and the key was printed (issue 76).
    address = f"127.0.0.1:{free_port()}"
    for key in ("sk-it's-SECRET1", 'sk-say-"SECRET2"', "sk-back\\slash-SECRET3", "SECRET4 $x`"):
        env = _env(None, address, LOCALRUN_API_KEY=key)
        shown = cli("launch", agent, "--dry-run", "-m", "x", env=env)
        assert shown.code == 0, shown.stderr
        assert "SECRET" not in shown.stdout + shown.stderr, (key, shown.stdout)
        assert "$LOCALRUN_API_KEY" in shown.stdout, shown.stdout


def test_launch_never_writes_through_a_link_planted_in_its_home(
    cli: CLI, running: Serve, agents: Path, home: Path, tmp_path: Path
) -> None:
    # launch followed links planted in LOCALRUN_HOME: Aider's settings file overwrote the
    # link's target and made it 0600, the server's log appended to it (issue 76).
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    victim.chmod(0o644)
    settings = home / "launch" / "aider-tiny_latest-ctx16k.model-settings.yml"
    settings.parent.mkdir(parents=True)
    settings.symlink_to(victim)
    env = _env(agents, running.url.removeprefix("http://"))
    result = cli("launch", "aider", "-m", "tiny", env=env)
    assert result.code == 0, result.stderr
    assert victim.read_text() == "precious\n" and victim.stat().st_mode & 0o777 == 0o644
    assert not settings.is_symlink() and "num_ctx" in settings.read_text()
    assert settings.stat().st_mode & 0o777 == 0o600

    # With no server answering, launch starts one with its log in logs/: a link there (or a
    # hard link to the victim) is refused, and no server is started.
    address = f"127.0.0.1:{free_port()}"
    log = home / "logs" / "launch-serve.log"
    log.parent.mkdir()
    for plant in (log.symlink_to, log.hardlink_to):
        plant(victim)
        refused = cli("launch", "claude", "-m", "tiny", env=_env(agents, address))
        assert_one_line_error(refused, str(log), "rm ")
        assert victim.read_text() == "precious\n" and victim.stat().st_mode & 0o777 == 0o644
        assert not _answers(address)
        log.unlink()
    # A folder of launch's own that is a link elsewhere is refused too.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    (home / "launch").rename(tmp_path / "launch-was")
    (home / "launch").symlink_to(elsewhere)
    moved = cli("launch", "aider", "-m", "tiny", env=env)
    assert_one_line_error(moved, str(home / "launch"))
    assert not list(elsewhere.iterdir()) and elsewhere.stat().st_mode & 0o777 == 0o755
