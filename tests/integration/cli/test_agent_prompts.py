"""Each coding agent's recorded first prompt, counted by the real server on every real tokenizer
the tests have (SmolLM2's and Gemma 3's), leaves the agent the room `localrun launch` promises
it at the context it `need`s (localrun.cli.launch.agents): Codex's first prompt on the starter was
8,736 tokens against a need of 8,192, so launch went ahead and Codex stopped, out of room."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from benchlib.agent_prompts import FirstPrompt, count, first_prompts

from localrun.cli.launch.agents import TOOLS
from localrun.scheduler import Scheduler
from localrun.store.local import Store

from support.server import LiveServer, add_model

pytestmark = [pytest.mark.server, pytest.mark.model]

PROMPTS = first_prompts()
MODELS = ("prompt-smollm2", "prompt-gemma3")


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory, smollm2_path: str, gemma3_path: str
) -> Iterator[LiveServer]:
    store = Store(tmp_path_factory.mktemp("agent-prompts") / "models")
    add_model(store, "prompt-smollm2", Path(smollm2_path))
    add_model(store, "prompt-gemma3", Path(gemma3_path))
    server = LiveServer(store, Scheduler(store, num_parallel=1, max_loaded=2, max_queue=8))
    yield server
    server.close()


def test_every_agent_has_a_recorded_first_prompt() -> None:
    assert {p.agent for p in PROMPTS} == set(TOOLS)


@pytest.mark.parametrize("agent", sorted(TOOLS))
def test_the_declared_prompt_fits_the_need(agent: str) -> None:
    tool = TOOLS[agent]
    assert tool.fits(tool.prompt, tool.need), (tool.prompt, tool.need)
    assert not tool.fits(tool.prompt, tool.need // 2), "need is twice what the prompt asks, or more"


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("prompt", PROMPTS, ids=[p.agent for p in PROMPTS])
def test_the_first_prompt_fits_the_agents_need(
    live: LiveServer, prompt: FirstPrompt, model: str
) -> None:
    tokens = count(live.url, prompt, model)
    tool = TOOLS[prompt.agent]
    assert tokens > 200, tokens  # the whole prompt was counted, tools and all
    assert tokens <= tool.prompt, f"{prompt.agent}'s prompt is {tokens} tokens on {model}"
    assert tool.fits(tokens, tool.need)
