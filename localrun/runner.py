"""A stored model loaded and ready to answer: parameters, chat template, stop sequences.

The runner turns a conversation into a prompt (SYSTEM and MESSAGE layers first, rendered by the
model's template), hands it to the engine, and filters the streamed answer for stop sequences.
The engine keeps the KV cache of the last conversation, so a follow-up turn evaluates only its
new tokens. `Prompter` (prompt tokens, sampling, grammar and tool handling of one request) and
`StopFilter` are shared with the server's runner process (localrun.worker), which drives the
batch engine instead of `Runner`; `localrun run` uses `Runner` in-process.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from localrun import config, thinking
from localrun import params as params_mod
from localrun import template as template_mod
from localrun import tools as tools_mod
from localrun.engine.types import (
    Backend,
    FimTokens,
    Generation,
    LoadedModel,
    LoadOptions,
    SamplingOptions,
    Timings,
    reusable,
)
from localrun.errors import (
    BadRequestError,
    CorruptBlobError,
    InvalidGGUFError,
    InvalidParameterError,
    LocalrunError,
    ModelLoadError,
)
from localrun.model import Model

LOAD_PARAMS = ("num_ctx", "num_batch", "num_thread", "num_gpu", "main_gpu", "use_mmap")

Message = dict[str, Any]
Format = str | dict[str, Any] | None


class Tokenizer(Protocol):
    """What prompt preparation needs of an engine (LlamaModel, BatchEngine and the fakes)."""

    @property
    def bos_text(self) -> str: ...

    @property
    def eos_text(self) -> str: ...

    @property
    def fim(self) -> FimTokens | None: ...

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]: ...

    def token_ids(self, text: str) -> list[int]: ...


@dataclass
class Prepared:
    """One request ready for an engine."""

    tokens: list[int]
    sampling: SamplingOptions  # .stop holds the stop strings the caller must apply
    tool_names: list[str] | None = None  # tools in force: parse the answer for calls
    forced_tool: bool = False  # the answer is grammar-constrained to be one tool call
    stop_tokens: frozenset[int] = frozenset()  # besides the model's own (FIM padding)
    # A reasoning model's <think> text: "split" off the answer, "hide" (think: false), or
    # None (not a reasoning model: text as it comes).
    reasoning: str | None = None
    thinking_open: bool = False  # the prompt opened <think>: the answer starts inside it
    channels: bool = False  # gpt-oss channels part reasoning from answer, not <think>
    # Leading tokens that the system prompt and the model's MESSAGE turns render to, whatever
    # the user says next: what the disk prompt cache keeps between processes.
    cache_prefix: int = 0


def grammar_for(format: Format) -> str | None:
    """The GBNF grammar for a `format`: "json" (any JSON value) or a JSON schema."""
    if format is None or format == "":
        return None
    if format == "json":
        from localrun.engine.llama import json_grammar

        return json_grammar()
    if isinstance(format, dict):
        return schema_grammar(format)
    raise BadRequestError(f"unknown format {format!r}", hint='use "json" or a JSON schema object')


def schema_grammar(schema: dict[str, Any]) -> str:
    """A GBNF grammar for the JSON values a JSON schema accepts (BadRequestError if none)."""
    from localrun import grammar_bounds
    from localrun.engine.llama import json_schema_grammar

    grammar_bounds.check_schema(schema)
    try:
        grammar = json_schema_grammar(json.dumps(schema))
    except Exception as exc:  # the converter raises anything from KeyError to assert
        raise BadRequestError(
            f"the JSON schema cannot be turned into a grammar: {type(exc).__name__}: {exc}",
            hint="simplify the schema (types, properties, enums, arrays, required)",
        ) from None
    return grammar_bounds.check_grammar(grammar)


def stop_tokens_for(template: str | None, tokenizer: Tokenizer) -> frozenset[int]:
    """The special tokens that end a turn in `template` (its end-of-turn markers)."""
    found: set[int] = set()
    for marker in template_mod.end_of_turn_markers(template):
        found.update(tokenizer.token_ids(marker))
    return frozenset(found)


@dataclass
class Prompter:
    """Turns requests into prompt tokens and sampling options for one loaded model."""

    model: Model
    params: dict[str, Any]  # the model's parameters with load-time overrides
    template: str | None
    tokenizer: Tokenizer
    stop_tokens: frozenset[int]
    # The fixed turns' rendered tokens by (turns, tools, variables): see `stable_prefix`.
    _prefixes: dict[str, list[int]] = field(default_factory=dict, repr=False)

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

    def prompt_tokens(
        self,
        conversation: list[Message],
        tools: list[tools_mod.Tool] | None = None,
        variables: dict[str, Any] | None = None,
    ) -> list[int]:
        return self.raw_tokens(self.prompt_text(conversation, tools, variables))

    def prompt_text(
        self,
        conversation: list[Message],
        tools: list[tools_mod.Tool] | None = None,
        variables: dict[str, Any] | None = None,
    ) -> str:
        if tools is not None and not tools_mod.template_supports_tools(self.template):
            conversation, tools = tools_mod.add_system_note(conversation, tools), None
        return template_mod.render(
            self.template,
            conversation,
            add_generation_prompt=True,
            bos_token=self.tokenizer.bos_text,
            eos_token=self.tokenizer.eos_text,
            tools=tools,
            variables=variables,
        )

    def raw_tokens(self, text: str) -> list[int]:
        """Tokens of prompt text as is (BOS added unless the text starts with it)."""
        bos = self.tokenizer.bos_text
        starts_with_bos = bool(bos) and text.startswith(bos)
        return self.tokenizer.tokenize(text, add_special=not starts_with_bos, parse_special=True)

    def sampling(self, options: dict[str, Any] | None, grammar: str | None) -> SamplingOptions:
        merged = {**self.params, **params_mod.validate(options or {})}
        if "speculate" not in merged:
            merged["speculate"] = config.speculate()
        return SamplingOptions.from_params(merged, grammar=grammar)

    def chat(
        self,
        messages: list[Message],
        *,
        system: str | None = None,
        options: dict[str, Any] | None = None,
        format: Format = None,
        tools: Any = None,
        tool_choice: Any = None,
        think: thinking.Think = None,
    ) -> Prepared:
        """A conversation (the model's own layers added) rendered by the template; `think`
        turns a reasoning model's thinking on or off (None: the model's default)."""
        variables = thinking.template_variables(think, self.template, str(self.model.name))
        in_force = tools_mod.in_force(tools, tool_choice)
        forced = tools_mod.forced_schema(in_force, tool_choice) if in_force else None
        # A forced tool call is JSON already; its grammar wins over `format`.
        grammar = schema_grammar(forced) if forced is not None else grammar_for(format)
        sampling = self.sampling(options, grammar)
        conversation = self.conversation(messages, system)
        if any(m.get("tool_calls") or m.get("role") == "tool" for m in conversation):
            conversation = tools_mod.prepare_messages(conversation, self.template)
        text = self.prompt_text(conversation, in_force, variables)
        names = tools_mod.names(in_force) if in_force else None
        prepared = Prepared(self.raw_tokens(text), sampling, names, forced is not None)
        has_system = bool(conversation) and conversation[0].get("role") == "system"
        fixed = int(has_system) + len(self.model.messages)
        prepared.cache_prefix = self.stable_prefix(
            conversation[:fixed], in_force, variables, prepared.tokens
        )
        if thinking.supports(self.template):
            prepared.reasoning = "hide" if think is False else "split"
            prepared.thinking_open = thinking.opens_thinking(text)
            if thinking.channels(self.template):
                prepared.channels = True  # its markers are special tokens: spell them out
                prepared.sampling = dataclasses.replace(prepared.sampling, special=True)
        return prepared

    def stable_prefix(
        self,
        fixed: list[Message],
        tools: list[tools_mod.Tool] | None,
        variables: dict[str, Any] | None,
        tokens: list[int],
    ) -> int:
        """How many leading `tokens` the turns `fixed` (system prompt, MESSAGEs) render to
        whatever follows them: the common prefix of two renderings with different user
        messages, found once per (turns, tools, variables)."""
        if not fixed:
            return 0
        key = json.dumps([fixed, repr(tools), variables], sort_keys=True, default=repr)
        prefix = self._prefixes.get(key)
        if prefix is None:
            one, two = (
                self.prompt_tokens([*fixed, {"role": "user", "content": text}], tools, variables)
                for text in ("A", "B")
            )
            prefix = one[: reusable(one, two)]
            if len(self._prefixes) >= 64:
                self._prefixes.clear()
            self._prefixes[key] = prefix
        return reusable(prefix, tokens)

    def complete(
        self, prompt: str, *, options: dict[str, Any] | None = None, format: Format = None
    ) -> Prepared:
        """Raw prompt text, no template."""
        return Prepared(self.raw_tokens(prompt), self.sampling(options, grammar_for(format)))

    def infill(
        self,
        prefix: str,
        suffix: str,
        *,
        extra: list[dict[str, str]] | None = None,
        options: dict[str, Any] | None = None,
        format: Format = None,
    ) -> Prepared:
        """Fill in the middle between `prefix` and `suffix`, from the model's FIM tokens.

        The layout is llama-server's (format_infill), so an editor plugin written for it gets
        the same prompt: [extra files] [BOS] <PRE> prefix <SUF> suffix <MID>, the prefix cut
        to 3/4 of a batch from its start and the suffix to the rest from its end, so the
        prompt is read in about one batch (fast to the first token, as typing wants). `extra`
        chunks ({"filename", "text"}: other open files) fill what the context has left.
        """
        fim = self.tokenizer.fim
        if fim is None:
            raise BadRequestError(
                f"{self.model.name} has no fill-in-the-middle tokens, so it cannot complete "
                "between a prefix and a suffix",
                hint="use a code model with FIM tokens (Qwen2.5-Coder, StarCoder2, CodeLlama)",
            )
        sampling = self.sampling(options, grammar_for(format))

        def tokens(text: str) -> list[int]:
            return self.tokenizer.tokenize(text, add_special=False, parse_special=False)

        extra_tokens: list[int] = []
        if fim.rep >= 0:
            extra_tokens += [fim.rep, *tokens("myproject\n")]
        for chunk in extra or []:
            if fim.sep >= 0:
                extra_tokens += [fim.sep, *tokens(chunk.get("filename", "tmp") + "\n")]
            else:
                extra_tokens += tokens("\n\n--- snippet ---\n\n")
            extra_tokens += tokens(chunk.get("text", ""))
        if fim.sep >= 0:
            extra_tokens += [fim.sep, *tokens("filename\n")]
        n_batch = int(self.params.get("num_batch", 512))
        before, after = tokens(prefix), tokens(suffix)
        before = before[len(before) - min(len(before), 3 * (n_batch // 4)) :]
        after = after[: max(0, n_batch // 4 - 2)]
        n_ctx = int(getattr(self.tokenizer, "n_ctx", 0) or 0)
        budget = max(0, n_ctx - n_batch - 2 * max(sampling.num_predict, 0))
        extra_tokens = extra_tokens[len(extra_tokens) - min(budget, len(extra_tokens)) :]
        head = [fim.bos] if fim.bos >= 0 else []
        layout = [*extra_tokens, *head, fim.pre, *before, fim.suf, *after, fim.mid]
        stops = frozenset(t for t in (fim.pad, fim.rep, fim.sep, fim.pre, fim.suf) if t >= 0)
        return Prepared(layout, sampling, stop_tokens=stops)


@dataclass
class Reply:
    """One streamed answer: iterate for text; then `text`, `done_reason` and `timings` are set."""

    _pieces: Iterator[str]
    generation: Generation
    text: str = ""
    done_reason: str | None = None
    thinking: str = ""  # a reasoning model's thinking, split off the answer
    on_thinking: Callable[[str], None] | None = None  # called with each piece of it

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

    @functools.cached_property
    def prompter(self) -> Prompter:
        return Prompter(self.model, self.params, self.template, self.engine, self.stop_tokens)

    # -- conversations ------------------------------------------------------------------------

    def conversation(self, messages: list[Message], system: str | None = None) -> list[Message]:
        """The model's SYSTEM and MESSAGE layers, then `messages` (a system message given
        there, or `system`, replaces the model's)."""
        return self.prompter.conversation(messages, system)

    def prompt_tokens(self, conversation: list[Message]) -> list[int]:
        return self.prompter.prompt_tokens(conversation)

    def chat(
        self,
        messages: list[Message],
        *,
        system: str | None = None,
        options: dict[str, Any] | None = None,
        format: Format = None,
        cancel: threading.Event | None = None,
        think: thinking.Think = None,
    ) -> Reply:
        """Answer the conversation `messages` (the model's own layers are added)."""
        prepared = self.prompter.chat(
            messages, system=system, options=options, format=format, think=think
        )
        generation = self.engine.generate(
            prepared.tokens,
            prepared.sampling,
            stop_tokens=self.stop_tokens,
            cancel=cancel,
            cache_prefix=prepared.cache_prefix,
        )
        reply = Reply(iter(()), generation)
        pieces: Iterator[str] = iter(generation)
        if prepared.reasoning:
            pieces = _split_thinking(pieces, prepared, reply)
        reply._pieces = _until_stop(pieces, generation, prepared.sampling.stop, reply)
        return reply

    def close(self) -> None:
        self.engine.close()


class StopFilter:
    """Applies stop strings to streamed text, holding back what could start one.

    `feed` returns the text that is safe to pass on; once a stop string appears, `hit` is set
    and everything from it on is dropped. `flush` releases what was held at the end.
    """

    def __init__(self, stops: tuple[str, ...] | list[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.longest = max((len(s) for s in self.stops), default=0)
        self.pending = ""
        self.hit = False
        self.matched: str | None = None  # the stop string that was hit

    def feed(self, piece: str) -> str:
        if self.hit:
            return ""
        if not self.stops:
            return piece
        pending = self.pending + piece
        hits = [(index, s) for s in self.stops if (index := pending.find(s)) >= 0]
        if hits:
            index, self.matched = min(hits, key=lambda hit: hit[0])
            self.hit, self.pending = True, ""
            return pending[:index]
        # Keep the longest tail that is still a prefix of some stop sequence.
        keep = 0
        for size in range(min(self.longest, len(pending)), 0, -1):
            tail = pending[-size:]
            if any(s.startswith(tail) for s in self.stops):
                keep = size
                break
        self.pending = pending[len(pending) - keep :]
        return pending[: len(pending) - keep]

    def flush(self) -> str:
        out, self.pending = ("" if self.hit else self.pending), ""
        return out


def new_splitter(prepared: Prepared) -> thinking.Splitter | thinking.ChannelSplitter:
    """What parts a prepared request's reasoning from its answer."""
    if prepared.channels:
        return thinking.ChannelSplitter()
    return thinking.Splitter(inside=prepared.thinking_open)


def _split_thinking(pieces: Iterator[str], prepared: Prepared, reply: Reply) -> Iterator[str]:
    """The answer's text; the reasoning goes to `reply.thinking` (and `on_thinking`), unless
    the request turned thinking off (then it is dropped)."""
    splitter = new_splitter(prepared)
    keep = prepared.reasoning == "split"

    def think(text: str) -> None:
        if text and keep:
            reply.thinking += text
            if reply.on_thinking is not None:
                reply.on_thinking(text)

    for piece in pieces:
        reasoning, answer = splitter.feed(piece)
        think(reasoning)
        if answer:
            yield answer
    reasoning, answer = splitter.finish()
    think(reasoning)
    if answer:
        yield answer


def _until_stop(
    pieces: Iterator[str], generation: Generation, stops: tuple[str, ...], reply: Reply
) -> Iterator[str]:
    """Pass text through, holding back what could be the start of a stop sequence."""
    if not stops:
        try:
            yield from pieces
        finally:
            generation.close()
        return
    stop = StopFilter(stops)
    try:
        for piece in pieces:
            out = stop.feed(piece)
            if out:
                yield out
            if stop.hit:
                reply.done_reason = "stop"
                return
        tail = stop.flush()
        if tail:
            yield tail
    finally:
        generation.close()


def damaged(model: Model, exc: InvalidGGUFError, what: str = "a file") -> CorruptBlobError:
    """The error for a stored file of `model` that is no longer valid GGUF (a damaged blob)."""
    return CorruptBlobError(
        f"{what} of {model.name} is damaged ({exc.message})",
        hint="run `localrun verify`, then remove and recreate or pull the model",
    )


@dataclass
class Fit:
    """How a model would be loaded: its header, context size, offload plan and warnings."""

    header: Any
    num_ctx: int
    plan: Any  # system.OffloadPlan
    warnings: list[str]


def plan_fit(model: Model, parameters: dict[str, Any], *, slots: int = 1, gpu: bool = True) -> Fit:
    """Decide num_ctx and the GPU offload for `model` without loading it (`show --fit` too).

    num_ctx is per sequence; the KV cache is sized for `slots` of them (the server's runner).
    `gpu` False plans for the CPU alone without asking llama.cpp what it can offload or probing
    for GPUs: for an engine that never uses one (the scripted fake), whose runner then starts
    without importing llama_cpp.
    """
    from localrun import gguf, system

    try:
        headers = [gguf.scan(path) for path in (model.model_parts or [model.model_path])]
        # The planner sizes layers from every part's tensors (scan results are shared: copy).
        header = dataclasses.replace(headers[0], tensors=[t for h in headers for t in h.tensors])
    except InvalidGGUFError as exc:
        raise damaged(model, exc, "the model file") from None
    num_ctx = system.default_num_ctx(parameters, header)
    warnings = []
    trained = header.arch_value("context_length")
    if isinstance(trained, int) and 0 < trained < num_ctx:
        warnings.append(
            f"num_ctx {num_ctx} is larger than the {trained} tokens {model.name} was trained on; "
            "answers past that point may degrade"
        )
    requested = parameters.get("num_gpu")
    offload, gpus = False, []
    if gpu:
        from localrun.engine.buildinfo import build_info

        build = build_info()
        offload = build.gpu_offload
        gpus = system.usable_gpus(system.detect().gpus, build.backends) if offload else []
    plan = system.plan_offload(
        header,
        num_ctx,
        requested=None if requested in (None, -1) else requested,
        gpus=gpus,
        gpu_offload_supported=offload,
        num_parallel=slots,
        num_batch=parameters.get("num_batch", system.DEFAULT_NUM_BATCH),
    )
    if not gpu:
        plan.reason = "this engine runs on the CPU only"
    if model.draft_path is not None:
        _plan_draft(model, plan, num_ctx, slots, parameters)
    return Fit(header, num_ctx, plan, warnings + list(plan.warnings))


def _plan_draft(
    model: Model, plan: Any, num_ctx: int, slots: int, parameters: dict[str, Any]
) -> None:
    """Add the draft model (weights, KV cache, compute buffer) to the plan: on the GPU with the
    model when the model is there whole, on the CPU otherwise (draft_offloaded says which)."""
    from localrun import gguf, system

    assert model.draft_path is not None
    try:
        header = gguf.scan(str(model.draft_path))
    except InvalidGGUFError as exc:
        raise damaged(model, exc, "the draft model file") from None
    draft = system.plan_offload(
        header,
        num_ctx,
        requested=0,
        gpus=[],
        gpu_offload_supported=False,
        num_parallel=slots,
        num_batch=parameters.get("num_batch", system.DEFAULT_NUM_BATCH),
    )
    if draft_offloaded(plan):
        plan.vram_bytes += draft.ram_bytes
    else:
        plan.ram_bytes += draft.ram_bytes
    plan.kv_bytes += draft.kv_bytes


def draft_offloaded(plan: Any) -> bool:
    """Whether a draft model goes to the GPU: when the model is there whole."""
    return bool(plan.gpu is not None and plan.n_gpu_layers >= plan.total_layers)


def available_memory() -> int:
    """Bytes a load may use now: free and reclaimable RAM, and free swap."""
    import psutil

    return int(psutil.virtual_memory().available + psutil.swap_memory().free)


def check_memory(
    model: Model, fit: Fit, parameters: dict[str, Any], *, slots: int = 1, available: int = 0
) -> None:
    """Refuse, before anything is allocated, a load whose planned RAM exceeds what is available.

    llama.cpp sizes the KV cache from num_ctx without asking: num_ctx 16777216 would take a
    runner past every limit (or abort it) instead of answering. `available` defaults to
    `available_memory()`.
    """
    needed = fit.plan.ram_bytes
    available = available or available_memory()
    if needed <= available:
        return
    have = f"about {_gb(available)} is available"
    if "num_ctx" in parameters:
        per = f" ({slots} slots)" if slots > 1 else ""
        raise InvalidParameterError(
            f"num_ctx {fit.num_ctx} needs about {_gb(needed)} of memory for {model.name}{per}; "
            + have,
            hint="use a smaller num_ctx",
        )
    raise ModelLoadError(
        f"{model.name} needs about {_gb(needed)} of memory to load; {have}",
        hint="close other programs, set a smaller num_ctx, or use a smaller quantization",
    )


def _gb(size: float) -> str:
    return f"{size / 1e9:.1f} GB" if size < 1e12 else f"{size / 1e12:.1f} TB"


# A stored file's path (…/blobs/sha256-<hex>) says where the store is: clients get the model's
# name instead, the server log the details.
_BLOB_PATH = re.compile(r"(?:[^\s'\"]*[/\\])?blobs[/\\]sha256-[0-9a-f]{64}")


def scrubbed(exc: LocalrunError, model: Model) -> LocalrunError:
    """`exc` with the paths of stored files replaced by the model's name."""
    message = _BLOB_PATH.sub(f"the file of {model.name}", exc.message)
    if message != exc.message:
        exc.message = message
        exc.args = (message,)
    return exc


def resolve_load_options(
    model: Model,
    parameters: dict[str, Any],
    notes: list[str],
    warn: Callable[[str], None],
    *,
    fit: Fit | None = None,
) -> LoadOptions:
    """Turn the model's parameters into concrete load options (threads, context, GPU layers).

    `fit` is a plan made already (e.g. for several slots); by default one is made here.
    """
    from localrun import system

    fit = fit or plan_fit(model, parameters)
    notes.append(fit.plan.reason)
    for warning in fit.warnings:
        warn(warning)
    return LoadOptions(
        num_ctx=fit.num_ctx,
        num_batch=parameters.get("num_batch", system.DEFAULT_NUM_BATCH),
        # More threads than cores only slows llama.cpp down (and 4096 of them stall a machine).
        num_thread=min(
            parameters.get("num_thread") or system.default_threads(), os.cpu_count() or 1
        ),
        num_gpu=fit.plan.n_gpu_layers,
        main_gpu=parameters.get("main_gpu", 0),
        use_mmap=parameters.get("use_mmap", True),
        adapters=tuple((str(path), 1.0) for path in model.adapter_paths),
        splits=tuple(str(path) for path in model.model_parts[1:]),
        draft=str(model.draft_path) if model.draft_path else None,
        draft_num_gpu=999 if draft_offloaded(fit.plan) else 0,
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
    try:
        fit = plan_fit(model, parameters)
        check_memory(model, fit, parameters)
        options = resolve_load_options(model, parameters, notes, warn, fit=fit)
        if backend is None:
            from localrun import probe
            from localrun.engine.llama import LlamaBackend

            # llama.cpp may abort or hang on a model that passes every check: a model not yet
            # seen to load cleanly is loaded in a child process first.
            probe.ensure_loads(model, overrides or {})
            backend = LlamaBackend()
        try:
            engine = backend.load(str(model.model_path), options)
        except InvalidGGUFError as exc:
            raise damaged(model, exc) from None
    except LocalrunError as exc:
        raise scrubbed(exc, model) from None
    template = model.template or engine.chat_template
    return Runner(
        model=model,
        engine=engine,
        params=parameters,
        template=template,
        stop_tokens=stop_tokens_for(template, engine),
        notes=notes,
        load_s=getattr(engine, "load_s", 0.0),
    )
