"""What each coding agent `localrun launch` starts needs to talk to the local server: its
program, the environment and arguments that point it at localrun, and how to install it.

Only the child's environment is set: no file of the user's is written (Ollama's launch edits
OpenCode's config; here OpenCode gets its provider through OPENCODE_CONFIG_CONTENT, which it
merges over the user's config). Pure: no I/O.

- Claude Code speaks Anthropic's API: ANTHROPIC_BASE_URL and a token, and every model it would
  pick by itself (the Opus/Sonnet/Haiku defaults, the small fast model, subagents) mapped to the
  chosen one, since localrun serves no model by those names; its non-essential traffic is off,
  so it works offline.
- Codex speaks the Responses API: a model provider of its own, given as `-c` overrides.
- OpenCode speaks OpenAI's chat completions through the AI SDK's openai-compatible provider.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Launch:
    """The program to run, its arguments and the environment it gets on top of the user's."""

    argv: list[str]
    env: dict[str, str]


@dataclass(frozen=True)
class Tool:
    name: str  # what `localrun launch NAME` takes
    title: str
    program: str  # looked up on PATH
    install: str  # how to get it, for the one-line error

    def launch(self, url: str, key: str, model: str, extra: list[str]) -> Launch:
        """Arguments and environment that point the tool at the server at `url` (its root),
        with API key `key`, on `model`; `extra` goes to the tool as given."""
        if self.name == "claude":
            env = {
                "ANTHROPIC_BASE_URL": url,
                "ANTHROPIC_AUTH_TOKEN": key,
                "ANTHROPIC_API_KEY": "",  # a key of the user's would be sent instead
                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            }
            for name in _CLAUDE_MODELS:
                env[name] = model
            return Launch([self.program, "--model", model, *extra], env)
        if self.name == "codex":
            provider = {
                "name": "localrun",
                "base_url": f"{url}/v1",
                "env_key": "LOCALRUN_CODEX_KEY",
                "wire_api": "responses",
            }
            overrides = ["-c", 'model_provider="localrun"']
            for field, value in provider.items():
                overrides += ["-c", f"model_providers.localrun.{field}={json.dumps(value)}"]
            argv = [self.program, *overrides, "-m", model, *extra]
            return Launch(argv, {"LOCALRUN_CODEX_KEY": key})
        config = {
            "$schema": "https://opencode.ai/config.json",
            "provider": {
                "localrun": {
                    "npm": "@ai-sdk/openai-compatible",
                    "name": "localrun",
                    "options": {"baseURL": f"{url}/v1", "apiKey": key},
                    "models": {model: {"name": model}},
                }
            },
            "model": f"localrun/{model}",
        }
        return Launch([self.program, *extra], {"OPENCODE_CONFIG_CONTENT": json.dumps(config)})


_CLAUDE_MODELS = (
    "ANTHROPIC_MODEL",
    "ANTHROPIC_DEFAULT_OPUS_MODEL",
    "ANTHROPIC_DEFAULT_SONNET_MODEL",
    "ANTHROPIC_DEFAULT_HAIKU_MODEL",
    "ANTHROPIC_SMALL_FAST_MODEL",
    "CLAUDE_CODE_SUBAGENT_MODEL",
)

TOOLS = {
    tool.name: tool
    for tool in (
        Tool(
            "claude",
            "Claude Code",
            "claude",
            "npm install -g @anthropic-ai/claude-code (see https://docs.claude.com/en/docs/claude-code)",
        ),
        Tool("codex", "Codex", "codex", "npm install -g @openai/codex"),
        Tool(
            "opencode",
            "OpenCode",
            "opencode",
            "npm install -g opencode-ai (see https://opencode.ai)",
        ),
    )
}
