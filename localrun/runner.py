"""A stored model loaded and ready to answer: parameters, chat template, stop sequences.

The runner turns a conversation into a prompt (SYSTEM and MESSAGE layers first, rendered by the
model's template), hands it to the engine, and filters the streamed answer for stop sequences.
The engine keeps the KV cache of the last conversation, so a follow-up turn evaluates only its
new tokens. Used by `localrun run` (one-shot, chat and batch) and, later, by the server.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from localrun import params as params_mod
from localrun import template as template_mod
from localrun.engine.types import (
    Backend,
    Generation,
    LoadedModel,
    LoadOptions,
    SamplingOptions,
    Timings,
)
from localrun.errors import CorruptBlobError, InvalidGGUFError
from localrun.model import Model

LOAD_PARAMS = ("num_ctx", "num_batch", "num_thread", "num_gpu", "main_gpu", "use_mmap")

Message = dict[str, Any]


@dataclass
class Reply:
    """One streamed answer: iterate for text; then `text`, `done_reason` and `timings` are set."""

    _pieces: Iterator[str]
    generation: Generation
    text: str = ""
    done_reason: str | None = None

    def __iter__(self) -> Iterator[str]:
        for piece in self._pieces:
            self.text += piece
            yield piece
        if self.done_reason is None:
            self.done_reason = self.generation.done_reason

    @property
    def timings(self) -> Timings:
        return self.generation.timings

    def cancel(self) -> None:
        """Stop now (e.g. on Ctrl-C): the answer so far stays, marked cancelled."""
        self.done_reason = "cancelled"
        self.generation.close()


@dataclass
class Runner:
    """A loaded model plus the parameters in force."""

    model: Model
    engine: LoadedModel
    params: dict[str, Any]
    template: str | None
    stop_tokens: frozenset[int]
    notes: list[str] = field(default_factory=list)  # e.g. why everything runs on the CPU
    load_s: float = 0.0

    # -- conversations ------------------------------------------------------------------------

    def conversation(self, messages: list[Message], system: str | None = None) -> list[Message]:
        """The model's SYSTEM and MESSAGE layers, then `messages` (a system message given
        there, or `system`, replaces the model's)."""
        out: list[Message] = []
        chosen = system if system is not None else self.model.system
        if messages and messages[0].get("role") == "system":
            chosen, messages = messages[0].get("content"), messages[1:]
        if chosen:
            out.append({"role": "system", "content": chosen})
        out += [{"role": m.role, "content": m.content} for m in self.model.messages]
        out += messages
        return out

    def prompt_tokens(self, conversation: list[Message]) -> list[int]:
        text = template_mod.render(
            self.template,
            conversation,
            add_generation_prompt=True,
            bos_token=self.engine.bos_text,
            eos_token=self.engine.eos_text,
        )
        starts_with_bos = bool(self.engine.bos_text) and text.startswith(self.engine.bos_text)
        return self.engine.tokenize(text, add_special=not starts_with_bos, parse_special=True)

    def chat(
        self,
        messages: list[Message],
        *,
        system: str | None = None,
        options: dict[str, Any] | None = None,
        format: str | None = None,
        cancel: threading.Event | None = None,
    ) -> Reply:
        """Answer the conversation `messages` (the model's own layers are added)."""
        merged = {**self.params, **params_mod.validate(options or {})}
        grammar = None
        if format == "json":
            from localrun.engine.llama import json_grammar

            grammar = json_grammar()
        sampling = SamplingOptions.from_params(merged, grammar=grammar)
        tokens = self.prompt_tokens(self.conversation(messages, system))
        generation = self.engine.generate(
            tokens, sampling, stop_tokens=self.stop_tokens, cancel=cancel
        )
        reply = Reply(iter(()), generation)
        reply._pieces = _until_stop(generation, sampling.stop, reply)
        return reply

    def close(self) -> None:
        self.engine.close()


def _until_stop(generation: Generation, stops: tuple[str, ...], reply: Reply) -> Iterator[str]:
    """Pass text through, holding back what could be the start of a stop sequence."""
    if not stops:
        yield from generation
        return
    longest = max(len(s) for s in stops)
    pending = ""
    try:
        for piece in generation:
            pending += piece
            hits = [(pending.find(s), s) for s in stops if s in pending]
            if hits:
                index = min(hits)[0]
                if index:
                    yield pending[:index]
                reply.done_reason = "stop"
                return
            # Keep the longest tail that is still a prefix of some stop sequence.
            keep = 0
            for size in range(1, min(longest, len(pending)) + 1):
                tail = pending[-size:]
                if any(s.startswith(tail) for s in stops):
                    keep = size
            if len(pending) > keep:
                yield pending[: len(pending) - keep]
                pending = pending[len(pending) - keep :]
        if pending:
            yield pending
    finally:
        generation.close()


@dataclass
class Fit:
    """How a model would be loaded: its header, context size, offload plan and warnings."""

    header: Any
    num_ctx: int
    plan: Any  # system.OffloadPlan
    warnings: list[str]


def plan_fit(model: Model, parameters: dict[str, Any]) -> Fit:
    """Decide num_ctx and the GPU offload for `model` without loading it (`show --fit` too)."""
    from localrun import gguf, system
    from localrun.engine.buildinfo import build_info

    try:
        headers = [gguf.scan(path) for path in (model.model_parts or [model.model_path])]
        # The planner sizes layers from every part's tensors (scan results are shared: copy).
        header = dataclasses.replace(headers[0], tensors=[t for h in headers for t in h.tensors])
    except InvalidGGUFError as exc:
        raise CorruptBlobError(
            f"the model file of {model.name} is damaged ({exc.message})",
            hint="run `localrun verify`, then remove and recreate or pull the model",
        ) from None
    num_ctx = system.default_num_ctx(parameters, header)
    warnings = []
    trained = header.arch_value("context_length")
    if isinstance(trained, int) and 0 < trained < num_ctx:
        warnings.append(
            f"num_ctx {num_ctx} is larger than the {trained} tokens {model.name} was trained on; "
            "answers past that point may degrade"
        )
    requested = parameters.get("num_gpu")
    build = build_info()
    gpus = system.usable_gpus(system.detect().gpus, build.backends) if build.gpu_offload else []
    plan = system.plan_offload(
        header,
        num_ctx,
        requested=None if requested in (None, -1) else requested,
        gpus=gpus,
        gpu_offload_supported=build.gpu_offload,
        num_batch=parameters.get("num_batch", system.DEFAULT_NUM_BATCH),
    )
    return Fit(header, num_ctx, plan, warnings + list(plan.warnings))


def resolve_load_options(
    model: Model, parameters: dict[str, Any], notes: list[str], warn: Callable[[str], None]
) -> LoadOptions:
    """Turn the model's parameters into concrete load options (threads, context, GPU layers)."""
    from localrun import system

    fit = plan_fit(model, parameters)
    notes.append(fit.plan.reason)
    for warning in fit.warnings:
        warn(warning)
    return LoadOptions(
        num_ctx=fit.num_ctx,
        num_batch=parameters.get("num_batch", system.DEFAULT_NUM_BATCH),
        num_thread=parameters.get("num_thread") or system.default_threads(),
        num_gpu=fit.plan.n_gpu_layers,
        main_gpu=parameters.get("main_gpu", 0),
        use_mmap=parameters.get("use_mmap", True),
        adapters=tuple((str(path), 1.0) for path in model.adapter_paths),
        splits=tuple(str(path) for path in model.model_parts[1:]),
    )


def load(
    model: Model,
    *,
    overrides: dict[str, Any] | None = None,
    backend: Backend | None = None,
    warn: Callable[[str], None] = lambda _: None,
) -> Runner:
    """Load `model` with its parameters (overridden by `overrides`)."""
    parameters = {**model.parameters, **params_mod.validate(overrides or {})}
    notes: list[str] = []
    options = resolve_load_options(model, parameters, notes, warn)
    if backend is None:
        from localrun.engine.llama import LlamaBackend

        backend = LlamaBackend()
    try:
        engine = backend.load(str(model.model_path), options)
    except InvalidGGUFError as exc:
        raise CorruptBlobError(
            f"a file of {model.name} is damaged ({exc.message})",
            hint="run `localrun verify`, then remove and recreate or pull the model",
        ) from None
    template = model.template or engine.chat_template
    stop_tokens: set[int] = set()
    for marker in template_mod.end_of_turn_markers(template):
        stop_tokens.update(engine.token_ids(marker))
    return Runner(
        model=model,
        engine=engine,
        params=parameters,
        template=template,
        stop_tokens=frozenset(stop_tokens),
        notes=notes,
        load_s=getattr(engine, "load_s", 0.0),
    )
