"""Build what each coding agent that `localrun launch` starts needs to talk to the local server.

For each agent: its program, the environment, arguments and files that point it at localrun,
the context its prompt needs, and how to install it. Pure: launch_cmd writes the files.

Only the child's environment and files under localrun's own folder are written, never a file of
the user's. Ollama's launch edits OpenCode's config; here OpenCode gets its provider through
OPENCODE_CONFIG_CONTENT, which it merges over the user's config.

Claude Code speaks Anthropic's API, Codex the Responses API, OpenCode OpenAI's chat completions
and Aider Ollama's API. Comments at _claude, _codex, _opencode and _aider say why each is set up
as it is; the comment above TOOLS says how the context each agent needs was measured.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path


@dataclass(frozen=True)
class Launch:
    """A program to run: its arguments, its environment, and files to write before it starts.

    The environment goes on top of the user's. `files` maps a path to its text.
    """

    argv: list[str]
    env: dict[str, str]
    files: dict[Path, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Setup:
    """What the agent is told of the model (context, thinking), and where its files are kept."""

    num_ctx: int
    thinks: bool
    folder: Path


@dataclass(frozen=True)
class Tool:
    name: str  # what `localrun launch NAME` takes
    title: str
    program: str  # looked up on PATH
    install: str  # how to get it, for the one-line error
    prompt: int  # tokens of the agent's own prompt (system prompt and tools), measured
    need: int  # the least context it works in
    want: int  # the context it gets where the model holds it
    why: str  # why it needs `need`, for the error that says the model is too small
    keeps: int = 0  # tokens it keeps free besides its prompt and an answer's room

    def fits(self, prompt: int, num_ctx: int) -> bool:
        """Whether a first prompt of `prompt` tokens leaves the agent the room it keeps.

        In a window of `num_ctx`, that room is an answer's (output_room) and its own `keeps`.
        """
        return prompt + output_room(num_ctx) + self.keeps <= num_ctx

    def launch(self, url: str, key: str, model: str, extra: list[str], setup: Setup) -> Launch:
        """Return the Launch that points the tool at the server at `url`, on `model`.

        `url` is the server's root and `key` its API key. `extra` goes to the tool as given.
        """
        if self.name == "claude":
            return _claude(self.program, url, key, model, extra, setup)
        if self.name == "codex":
            return _codex(self.program, url, key, model, extra, setup)
        if self.name == "aider":
            return _aider(self.program, url, key, model, extra, setup)
        return _opencode(self.program, url, key, model, extra, setup)


def output_room(num_ctx: int) -> int:
    """The longest answer an agent is told to ask for in a window of `num_ctx`."""
    return 8192 if num_ctx >= 65536 else 4096 if num_ctx >= 16384 else max(512, num_ctx // 8)


# Claude Code speaks Anthropic's API: ANTHROPIC_BASE_URL and a token. Every model it would pick
# by itself (the Opus/Sonnet/Haiku defaults, the small fast model, subagents) maps to the chosen
# one, since localrun serves no model by those names. Its non-essential traffic is off, so it
# works offline. It is told the window and an answer's room, and not to think when the model
# cannot. Its per-request attribution line is off: it changes every request, so the prompt cache
# could never reuse the system prompt.
def _claude(program: str, url: str, key: str, model: str, extra: list[str], s: Setup) -> Launch:
    env = {
        "ANTHROPIC_BASE_URL": url,
        "ANTHROPIC_AUTH_TOKEN": key,
        "ANTHROPIC_API_KEY": "",  # a key of the user's would be sent instead
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "CLAUDE_CODE_ATTRIBUTION_HEADER": "0",
        "CLAUDE_CODE_MAX_CONTEXT_TOKENS": str(s.num_ctx),
        "CLAUDE_CODE_MAX_OUTPUT_TOKENS": str(output_room(s.num_ctx)),
    }
    if not s.thinks:
        env["CLAUDE_CODE_DISABLE_THINKING"] = "1"
    for name in _CLAUDE_MODELS:
        env[name] = model
    return Launch([program, "--model", model, *extra], env)


# Codex speaks the Responses API: a model provider of its own, given as `-c` overrides, with the
# window and when to compact. Its hosted web search is off: there is no search engine here.
def _codex(program: str, url: str, key: str, model: str, extra: list[str], s: Setup) -> Launch:
    provider = {
        "name": "localrun",
        "base_url": f"{url}/v1",
        "env_key": "LOCALRUN_CODEX_KEY",
        "wire_api": "responses",
    }
    overrides = ["-c", 'model_provider="localrun"']
    for field_name, text in provider.items():
        overrides += ["-c", f"model_providers.localrun.{field_name}={json.dumps(text)}"]
    settings: dict[str, object] = {
        "model_context_window": s.num_ctx,
        "model_auto_compact_token_limit": s.num_ctx - output_room(s.num_ctx),
        "web_search": "disabled",
    }
    catalog = s.folder / f"codex-{_safe(model)}.models.json"
    settings["model_catalog_json"] = str(catalog)
    for key_name, value in settings.items():
        overrides += ["-c", f"{key_name}={json.dumps(value)}"]
    argv = [program, *overrides, "-m", model, *extra]
    return Launch(argv, {"LOCALRUN_CODEX_KEY": key}, {catalog: _codex_catalog(model)})


# A model Codex does not know gets no apply_patch tool. So a one-model catalog
# (`model_catalog_json`, read at start in place of the built-in one) describes the model as
# Codex's fallback for an unknown model does (codex-rs/models-manager/src/model_info.rs, 0.169.0).
# Its instructions are Codex's too: codex_prompt.md is Codex's prompt.md (Apache-2.0,
# codex_prompt.md.LICENSE). With `apply_patch_tool_type: freeform`, Codex offers apply_patch as a
# custom tool in its Lark grammar, which the server holds the model's patch to.
def _codex_catalog(model: str) -> str:
    """Return Codex's catalog of one model, with apply_patch as Codex's free-form tool.

    The other fields are the metadata Codex 0.169.0 falls back on for a model it does not know
    (those a catalog must give). The window and compaction come from the `-c` overrides.
    """
    entry = {
        "slug": model,
        "display_name": model,
        "base_instructions": _codex_prompt(),
        "apply_patch_tool_type": "freeform",
        "supported_reasoning_levels": [],
        "shell_type": "default",
        "visibility": "none",
        "supported_in_api": True,
        "priority": 99,
        "support_verbosity": False,
        "truncation_policy": {"mode": "bytes", "limit": 10_000},
        "experimental_supported_tools": [],
    }
    return json.dumps({"models": [entry]})


def _codex_prompt() -> str:
    return resources.files("localrun.cli").joinpath("codex_prompt.md").read_text("utf-8")


def _safe(model: str) -> str:
    """`model` as part of a file's name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in model)


# OpenCode speaks OpenAI's chat completions through the AI SDK's openai-compatible provider. It
# gets the model's window and output limit, by which it compacts.
def _opencode(program: str, url: str, key: str, model: str, extra: list[str], s: Setup) -> Launch:
    entry: dict[str, object] = {
        "name": model,
        "limit": {"context": s.num_ctx, "output": output_room(s.num_ctx)},
        "reasoning": s.thinks,
        "tool_call": True,
    }
    config = {
        "$schema": "https://opencode.ai/config.json",
        "provider": {
            "localrun": {
                "npm": "@ai-sdk/openai-compatible",
                "name": "localrun",
                "options": {"baseURL": f"{url}/v1", "apiKey": key},
                "models": {model: entry},
            }
        },
        "model": f"localrun/{model}",
    }
    return Launch([program, *extra], {"OPENCODE_CONFIG_CONTENT": json.dumps(config)})


# Aider speaks Ollama's API through litellm (`ollama_chat/`). A model-settings file fixes num_ctx:
# else Aider sends a different one with every request, and each would reload the model. A
# metadata file tells it the window.
def _aider(program: str, url: str, key: str, model: str, extra: list[str], s: Setup) -> Launch:
    name = f"ollama_chat/{model}"
    safe = _safe(model)
    settings = s.folder / f"aider-{safe}.model-settings.yml"
    metadata = s.folder / f"aider-{safe}.model-metadata.json"
    room = output_room(s.num_ctx)
    files = {
        # YAML is a superset of JSON: the settings are written as JSON, quoted whatever the name.
        settings: json.dumps([{"name": name, "extra_params": {"num_ctx": s.num_ctx}}], indent=2),
        metadata: json.dumps(
            {
                name: {
                    "max_tokens": room,
                    "max_input_tokens": s.num_ctx - room,
                    "max_output_tokens": room,
                    "litellm_provider": "ollama_chat",
                    "mode": "chat",
                    "supports_function_calling": True,
                }
            },
            indent=2,
        ),
    }
    argv = [
        program,
        "--model",
        name,
        "--model-settings-file",
        str(settings),
        "--model-metadata-file",
        str(metadata),
        "--no-show-model-warnings",
        "--no-check-update",
        "--analytics-disable",
        *extra,
    ]
    return Launch(argv, {"OLLAMA_API_BASE": url, "OLLAMA_API_KEY": key}, files)


_CLAUDE_MODELS = (
    "ANTHROPIC_MODEL",
    "ANTHROPIC_DEFAULT_OPUS_MODEL",
    "ANTHROPIC_DEFAULT_SONNET_MODEL",
    "ANTHROPIC_DEFAULT_HAIKU_MODEL",
    "ANTHROPIC_SMALL_FAST_MODEL",
    "CLAUDE_CODE_SUBAGENT_MODEL",
)

# `prompt` is the agent's first prompt, with its recorded release and default tools, counted on
# the tokenizers at hand (SmolLM2's and Gemma 3's; scripts/measure/agent_prompts.py); the larger
# count is kept. `need` is the least context the agent works in: its prompt, an answer's room and
# what it keeps free besides (`keeps`). Claude Code compacts 13,000 tokens before the end; Codex
# and OpenCode keep a tool call and its result; Aider its repository map.
# tests/integration/cli/test_agent_prompts.py holds `need` to the measure. `want` is what launch
# gives the agent when the model was trained on that much.
TOOLS = {
    tool.name: tool
    for tool in (
        Tool(
            "claude",
            "Claude Code",
            "claude",
            "npm install -g @anthropic-ai/claude-code (see https://docs.claude.com/en/docs/claude-code)",
            prompt=20_198,
            need=40_960,
            want=65_536,
            why="its prompt is about 20,200 tokens, and it compacts the conversation once it is "
            "within 13,000 tokens and an answer's room of the window's end",
            keeps=13_000,
        ),
        Tool(
            "codex",
            "Codex",
            "codex",
            "npm install -g @openai/codex",
            prompt=9_062,
            need=16_384,
            want=32_768,
            why="its prompt is about 9,100 tokens, and it compacts once an answer's room is left",
            keeps=2_048,
        ),
        Tool(
            "opencode",
            "OpenCode",
            "opencode",
            "npm install -g opencode-ai (see https://opencode.ai)",
            prompt=7_714,
            need=12_288,
            want=32_768,
            why="its prompt is about 7,700 tokens, and it compacts once an answer's room is left",
            keeps=2_048,
        ),
        Tool(
            "aider",
            "Aider",
            "aider",
            "pip install aider-chat (or: pipx install aider-chat)",
            prompt=741,
            need=4_096,
            want=16_384,
            why="its prompt, repository map and an answer take about 4,000 tokens",
            keeps=1_024,
        ),
    )
}
