"""Prompt preparation: a GenRequest turned into prompt tokens and sampling for one loaded model.

A chat is the model's SYSTEM and MESSAGE layers, then the request's messages, rendered by the
model's template (tools and thinking variables included); a completion is its prompt as it is,
or a fill-in-the-middle layout of the model's FIM tokens. `Prepared` also says how the answer is
read: stop strings, tool calls, a reasoning model's thinking.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Protocol

from localrun.engine.sampling import schema_items as watch
from localrun.engine.types import FimTokens, SamplingOptions, reusable
from localrun.errors import BadRequestError
from localrun.formats import calls as tools_mod
from localrun.formats import grammar_bounds, parsers
from localrun.formats import reasoning as reasoning_mod
from localrun.formats import template as template_mod
from localrun.model.stored import Model
from localrun.recipes import params as params_mod
from localrun.request import media as media_mod
from localrun.request.genrequest import GenRequest
from localrun.settings import config
from localrun.worker.grammars import forced as forced_mod
from localrun.worker.grammars.format import constraint_for, format_schema, header, with_forcing

Message = dict[str, Any]

# The characters of a prompt's end a candidate's first token is read after (Prompter._first_token).
_TAIL = 64


class Tokenizer(Protocol):
    """What prompt preparation needs of an engine (BatchEngine and the fake)."""

    n_vocab: int

    @property
    def bos_text(self) -> str: ...

    @property
    def eos_text(self) -> str: ...

    @property
    def fim(self) -> FimTokens | None: ...

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]: ...

    def token_ids(self, text: str) -> list[int]: ...

    def media_prompt(self, text: str, media: list[media_mod.Media], *, add_special: bool) -> Any:
        """Text with images or audio as an engine prompt (.tokens; .free() when unused)."""
        ...


@dataclass
class Prepared:
    """One request ready for an engine."""

    tokens: list[int]
    sampling: SamplingOptions  # .stop holds the stop strings the caller must apply
    tool_names: list[str] | None = None  # tools in force: parse the answer for calls
    forced_tool: bool = False  # the answer is grammar-constrained to be one tool call
    # The model's family (formats/parsers): its reasoning tags, and with tools in force, its
    # call syntax bound to those tools; `primed` is a call marker the prompt ends with.
    family: parsers.Family = parsers.DEFAULT
    tool_syntax: parsers.Syntax | None = None
    primed: str = ""
    stop_tokens: frozenset[int] = frozenset()  # besides the model's own (FIM padding)
    # A reasoning model's <think> text: "split" off the answer, "hide" (think: false), or
    # None (not a reasoning model: text as it comes).
    reasoning: str | None = None
    thinking_open: bool = False  # the prompt opened <think>: the answer starts inside it
    channels: bool = False  # gpt-oss channels part reasoning from answer, not <think>
    # Leading tokens that the system prompt and the model's MESSAGE turns render to, whatever
    # the user says next: what the disk prompt cache keeps between processes.
    cache_prefix: int = 0
    return_context: bool = False  # the answer's end carries the prompt's and answer's tokens
    media: Any = None  # the engine's prompt with images or audio (its tokens are `tokens`)
    # Leading tokens the tokenizer put before the prompt's text (its BOS): a prompt echoed
    # back with its log-probabilities leaves them out.
    added: int = 0


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
    _spell: dict[str, frozenset[int]] = field(default_factory=dict, repr=False)
    _special: dict[str, dict[str, int]] = field(default_factory=dict, repr=False)
    _family: parsers.Family | None = field(default=None, repr=False)

    def prepare(self, request: GenRequest) -> Prepared:
        """Return a request ready for the engine: a chat, a completion or a fill in the middle.

        Its prompt comes after the request's `context` tokens, with the log-probabilities it asks
        for.
        """
        if request.messages is not None:
            prepared = self.chat(request)
        elif request.suffix is None:
            prepared = self.complete(request)
        else:
            prepared = self.infill(request)
        if request.context:  # an empty one changes nothing (and keeps the cached prefix)
            context = token_ids(request.context, self.tokenizer.n_vocab, "context")
            self._after_context(context, prepared)
        if not prepared.tokens:  # the engine needs at least one token to start from
            raise BadRequestError("the prompt is empty", hint="send a prompt of some text")
        if request.logprobs is not None:
            prepared.sampling = dataclasses.replace(
                prepared.sampling, logprobs=request.logprobs, logprobs_end=request.logprobs_end
            )
        if request.prompt_logprobs is not None:
            prepared.sampling = dataclasses.replace(
                prepared.sampling, prompt_logprobs=request.prompt_logprobs
            )
        if request.logit_bias:
            biases = logit_biases(request.logit_bias, self.tokenizer.n_vocab)
            prepared.sampling = dataclasses.replace(prepared.sampling, logit_bias=biases)
        if request.candidates is not None:
            self._read_over(request, prepared)
        prepared.return_context = request.return_context
        return prepared

    def _read_over(self, request: GenRequest, prepared: Prepared) -> None:
        """Read the answer's first token over the request's candidate texts.

        Each entry holds the log-probabilities of their first tokens. The token is chosen among
        the candidates (a grammar of them), so the answer's first token is never one that ends
        it.
        """
        texts = request.candidates or []
        if request.format or request.tools:
            raise BadRequestError("candidates cannot be read with a format or tools")
        if prepared.thinking_open or prepared.channels:
            raise BadRequestError(
                f"{self.model.name} reasons before it answers, so its next token is no answer",
                hint="ask a model that answers at once (or one whose thinking can be turned off)",
            )
        before = self.chat_text(request) if request.messages is not None else request.prompt
        ids: list[int] = []
        for text in texts:
            token = self._first_token(before or "", text)
            if token is None:
                raise BadRequestError("a candidate is empty")
            if token in ids:
                other = texts[ids.index(token)]
                raise BadRequestError(
                    f"candidates {other!r} and {text!r} begin with the same token for "
                    f"{self.model.name}",
                    hint="give candidates that differ in their first token",
                )
            ids.append(token)
        choices = " | ".join(json.dumps(text, ensure_ascii=False) for text in texts)
        prepared.sampling = dataclasses.replace(
            prepared.sampling,
            candidates=tuple(ids),
            constraint=_checked(f"{header()}\nstart: {choices}", True),
            logprobs=max(0, prepared.sampling.logprobs),
        )

    def _first_token(self, before: str, text: str) -> int | None:
        """Return the first token of `text` right after the prompt text `before`, as spelled there.

        There it has no SentencePiece space put before it, and no merge with what precedes it.
        Where the two cannot be told apart, it is the first token of `text` alone. Only the
        prompt's end is tokenized, not the whole prompt: a token reaches back no further.
        """
        tail = before[-_TAIL:]
        head = self.tokenizer.tokenize(tail, add_special=False, parse_special=True)
        whole = self.tokenizer.tokenize(tail + text, add_special=False, parse_special=True)
        if len(whole) > len(head) and whole[: len(head)] == head:
            return whole[len(head)]
        alone = self.tokenizer.tokenize(text, add_special=False, parse_special=False)
        return alone[0] if alone else None

    def _after_context(self, context: list[int], prepared: Prepared) -> None:
        """The request's `context` tokens, then its prompt's (without a second BOS)."""
        tokens = prepared.tokens
        bos_text = self.tokenizer.bos_text
        bos = self.tokenizer.token_ids(bos_text) if bos_text else []
        drop = int(bool(context and bos and tokens[:1] == bos[:1]))
        prepared.tokens = context + tokens[drop:]
        prepared.added = 0  # the context comes first, as it is
        if prepared.media is not None:
            prepared.media.move(len(context) - drop, prepared.tokens)
        prepared.cache_prefix = 0  # the model's turns no longer come first

    def conversation(self, messages: list[Message], system: str | None = None) -> list[Message]:
        """Return the model's SYSTEM and MESSAGE layers, then `messages`.

        A system message given in `messages`, or `system`, replaces the model's.
        """
        out: list[Message] = []
        chosen = system if system is not None else self.model.system
        if messages and messages[0].get("role") == "system":
            chosen, messages = messages[0].get("content"), messages[1:]
        if chosen:
            out.append({"role": "system", "content": chosen})
        out += [{"role": m.role, "content": m.content} for m in self.model.messages]
        out += [{k: v for k, v in m.items() if k != "media"} for m in messages]  # text only
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
        *,
        add_generation_prompt: bool = True,
    ) -> str:
        return template_mod.render(
            self.template,
            conversation,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.tokenizer.bos_text,
            eos_token=self.tokenizer.eos_text,
            tools=tools,
            variables=variables,
            family=self.family() if tools else None,
        )

    def raw_tokens(self, text: str) -> list[int]:
        """Tokens of prompt text as is (BOS added unless the text starts with it)."""
        return self.tokenizer.tokenize(text, add_special=self._adds_bos(text), parse_special=True)

    def _adds_bos(self, text: str) -> bool:
        bos = self.tokenizer.bos_text
        return not (bool(bos) and text.startswith(bos))

    def _prepared(
        self, text: str, media: list[media_mod.Media], sampling: SamplingOptions
    ) -> Prepared:
        """Prompt text (with a marker for each medium) and its media, ready for the engine."""
        if not media:
            prepared = Prepared(self.raw_tokens(text), sampling)
            bos_text = self.tokenizer.bos_text
            if bos_text and self._adds_bos(text):
                bos = self.tokenizer.token_ids(bos_text)
                prepared.added = int(bool(bos) and prepared.tokens[:1] == bos[:1])
            return prepared
        prompt = self.tokenizer.media_prompt(text, media, add_special=self._adds_bos(text))
        prepared = Prepared(prompt.tokens, sampling)
        prepared.media = prompt
        return prepared

    def sampling(
        self, options: dict[str, Any] | None, constraint: str | None, memory: str | None = None
    ) -> SamplingOptions:
        """Return the request's sampling options over the model's.

        The num_ctx its options name is the request's own context: the scheduler writes there
        the context it answers the request with. The engine holds the request to it within the
        slot's (SamplingOptions.context).
        """
        asked = params_mod.validate(options or {})
        merged = {**self.params, **asked}
        if "speculate" not in merged:
            merged["speculate"] = config.speculate()
        context = asked.get("num_ctx")
        return SamplingOptions.from_params(
            merged,
            constraint=_checked(constraint, merged.get("grammar_forcing", True))
            if constraint
            else None,
            memory=memory,
            context=context if isinstance(context, int) and context > 0 else 0,
        )

    def chat(self, request: GenRequest) -> Prepared:
        """Render a conversation, the model's own layers added, by the template.

        `think` turns a reasoning model's thinking on or off (None: the model's default).
        """
        think, variables, in_force, conversation = self._chat_parts(request)
        text = self.prompt_text(conversation, in_force, variables)
        family = self.family()
        syntax = family.syntax.with_tools(in_force) if in_force else None
        primed = next((m for m in family.syntax.starts if text.endswith(m)), "")
        sampling, forced = self._answer_sampling(request, text, family, syntax, in_force, primed)
        media = media_of(request.messages or [])
        prepared = self._prepared(text, media, sampling)
        prepared.tool_names = tools_mod.names(in_force) if in_force else None
        prepared.forced_tool = forced
        prepared.family = family
        if syntax is not None:
            prepared.tool_syntax, prepared.primed = syntax, primed
        has_system = bool(conversation) and conversation[0].get("role") == "system"
        fixed = int(has_system) + len(self.model.messages)
        prepared.cache_prefix = self.stable_prefix(
            conversation[:fixed], in_force, variables, prepared.tokens
        )
        if reasoning_mod.supports(self.template):
            prepared.reasoning = "hide" if think is False else "split"
            prepared.thinking_open = reasoning_mod.opens_thinking(text, *family.think)
        if family.harmony and (prepared.reasoning or in_force):
            prepared.channels = True  # its markers are special tokens: spell them out
            prepared.sampling = dataclasses.replace(prepared.sampling, special=True)
        elif prepared.reasoning or in_force:
            spell = self._spelled(family)
            if spell:
                prepared.sampling = dataclasses.replace(prepared.sampling, spell=spell)
        return prepared

    def _answer_sampling(
        self,
        request: GenRequest,
        text: str,
        family: parsers.Family,
        syntax: parsers.Syntax | None,
        in_force: list[tools_mod.Tool] | None,
        primed: str,
    ) -> tuple[SamplingOptions, bool]:
        """Return a chat's sampling with its answer's constraint, and whether that forces a call.

        A forced call's grammar, in the family's syntax, wins over `format`. `format` with tools
        is a call or the format (Ollama's). Under tool_choice "auto", a strict tool (or a custom
        tool's grammar) holds its call to its schema once begun. `syntax` is the family's,
        reading the tools in force (None without tools).
        """
        special = self._markers(family) if syntax is not None else {}
        grammars = request.tool_grammars
        forced = lazy = None
        if syntax is not None and in_force:
            forced = forced_mod.grammar(
                syntax, in_force, request.tool_choice, primed=primed, special=special,
                grammars=grammars,
            )  # fmt: skip
        constraint = forced or constraint_for(request.format, lenient=request.format_lenient)
        schema = format_schema(request.format)
        if syntax is not None and in_force and not forced:
            if schema is not None:
                constraint = forced_mod.call_or_format(
                    syntax, in_force, schema, primed=primed, special=special,
                    lenient=request.format_lenient,
                )  # fmt: skip
            else:
                lazy = forced_mod.lazy(
                    syntax, in_force, primed=primed, special=special, grammars=grammars
                )
                constraint = lazy[0] if lazy else constraint
        sampling = self.sampling(request.options, constraint, request.memory)
        if schema is not None and not forced and not in_force and watch.watched(schema):
            # Items that depend on each other (uniqueItems, contains): engine.sampling.schema_items
            # holds them.
            sampling = dataclasses.replace(sampling, watch=json.dumps(schema))
        if lazy is not None:
            opened = reasoning_mod.opens_thinking(text, *family.think)
            sampling = dataclasses.replace(
                sampling, triggers=lazy[1], reasoning=(*family.think, opened)
            )
        return sampling, forced is not None

    def family(self) -> parsers.Family:
        """Return the model's family, found by its template's markers (formats.template.family).

        Else it is found by a call token its vocabulary has as a special token (Phi-4-mini's
        `<|tool_call|>`).
        """
        if self._family is None:
            found = template_mod.family(self.template)
            if found is parsers.DEFAULT:
                by_token = parsers.by_token(lambda text: bool(self.tokenizer.token_ids(text)))
                found = by_token or found
            self._family = found
        return self._family

    def _markers(self, family: parsers.Family) -> dict[str, int]:
        """Return the family's markers that are special tokens of this vocabulary, with their ids.

        A forced call's grammar lets the model write the token.
        """
        found = self._special.get(family.name)
        if found is None:
            found = {}
            for marker in family.spelled():
                ids = self.tokenizer.token_ids(marker)
                if len(ids) == 1:
                    found[marker] = ids[0]
            self._special[family.name] = found
        return found

    def _spelled(self, family: parsers.Family) -> frozenset[int]:
        """Return the ids of the family's markers that are special tokens in this vocabulary.

        The engine spells them out, as llama-server does its chat format's preserved tokens.
        """
        found = self._spell.get(family.name)
        if found is None:
            ids: set[int] = set()
            for marker in family.spelled():
                ids.update(self.tokenizer.token_ids(marker))
            found = self._spell[family.name] = frozenset(ids)
        return found

    def chat_text(self, request: GenRequest, *, add_generation_prompt: bool = True) -> str:
        """The prompt text a chat request renders to (what /apply-template shows)."""
        _, variables, in_force, conversation = self._chat_parts(request)
        return self.prompt_text(
            conversation, in_force, variables, add_generation_prompt=add_generation_prompt
        )

    def _chat_parts(
        self, request: GenRequest
    ) -> tuple[Any, dict[str, Any], list[tools_mod.Tool] | None, list[Message]]:
        """A chat request's think, template variables, tools in force and whole conversation."""
        think = reasoning_mod.check(request.think)
        if request.think_adaptive and not reasoning_mod.supports(self.template):
            think = None  # the model decides, and this one cannot think
        variables = reasoning_mod.template_variables(think, self.template, str(self.model.name))
        in_force = tools_mod.in_force(request.tools, request.tool_choice)
        conversation = self.conversation(request.messages or [], request.system)
        return think, variables, in_force, conversation

    def stable_prefix(
        self,
        fixed: list[Message],
        tools: list[tools_mod.Tool] | None,
        variables: dict[str, Any] | None,
        tokens: list[int],
    ) -> int:
        """Return how many leading `tokens` the turns `fixed` render to, whatever follows them.

        The turns are the system prompt and MESSAGEs. Their tokens are the common prefix of two
        renderings with different user messages, found once per (turns, tools, variables).
        """
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

    def complete(self, request: GenRequest) -> Prepared:
        """Raw prompt text, no template."""
        sampling = self.sampling(
            request.options,
            constraint_for(request.format, lenient=request.format_lenient),
            request.memory,
        )
        if request.tokens is not None:  # read as they are: no BOS added
            if request.media:
                raise BadRequestError("a prompt of token ids cannot hold images or audio")
            return Prepared(token_ids(request.tokens, self.tokenizer.n_vocab, "prompt"), sampling)
        media = [
            media_mod.Media.from_wire(item, f"media[{i}]")
            for i, item in enumerate(request.media or [])
        ]
        return self._prepared(request.prompt or "", media, sampling)

    def infill(self, request: GenRequest) -> Prepared:
        """Fill in the middle between the prompt and its suffix, from the model's FIM tokens.

        The layout is llama-server's (format_infill), so an editor plugin written for it gets
        the same prompt: [extra files] [BOS] <PRE> prefix <SUF> suffix <MID>. The prefix is cut
        to 3/4 of a batch from its start and the suffix to the rest from its end. So the prompt
        is read in about one batch, fast to the first token, as typing wants. `extra` chunks
        ({"filename", "text"}: other open files) fill what the context has left.
        """
        fim = self.tokenizer.fim
        if fim is None:
            raise BadRequestError(
                f"{self.model.name} has no fill-in-the-middle tokens, so it cannot complete "
                "between a prefix and a suffix",
                hint="use a code model with FIM tokens (Qwen2.5-Coder, StarCoder2, CodeLlama)",
            )
        sampling = self.sampling(
            request.options,
            constraint_for(request.format, lenient=request.format_lenient),
            request.memory,
        )
        prefix, suffix = request.prompt or "", request.suffix or ""

        def tokens(text: str) -> list[int]:
            return self.tokenizer.tokenize(text, add_special=False, parse_special=False)

        extra_tokens: list[int] = []
        if fim.rep >= 0:
            extra_tokens += [fim.rep, *tokens("myproject\n")]
        for chunk in request.extra or []:
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
        n_ctx = sampling.within(n_ctx)
        budget = max(0, n_ctx - n_batch - 2 * max(sampling.num_predict, 0))
        extra_tokens = extra_tokens[len(extra_tokens) - min(budget, len(extra_tokens)) :]
        head = [fim.bos] if fim.bos >= 0 else []
        layout = [*extra_tokens, *head, fim.pre, *before, fim.suf, *after, fim.mid]
        stops = frozenset(t for t in (fim.pad, fim.rep, fim.sep, fim.pre, fim.suf) if t >= 0)
        return Prepared(layout, sampling, stop_tokens=stops)


def media_of(messages: list[Message]) -> list[media_mod.Media]:
    """The images and audio of a conversation's messages, in the order of their markers."""
    return [
        media_mod.Media.from_wire(item, f"messages[{i}].media[{j}]")
        for i, message in enumerate(messages)
        for j, item in enumerate(message.get("media") or [])
    ]


def logit_biases(pairs: list[list[Any]], n_vocab: int) -> tuple[tuple[int, float], ...]:
    """Return a request's [token id, bias] pairs for the sampler, each token in the vocabulary.

    A bias of None is minus infinity: never that token. A token named twice keeps its last bias.
    """
    token_ids([token for token, _ in pairs], n_vocab, "logit_bias")
    biases = {int(token): -math.inf if bias is None else float(bias) for token, bias in pairs}
    return tuple(biases.items())


def token_ids(value: Any, n_vocab: int, key: str) -> list[int]:
    """Token ids from a request, each in the model's vocabulary (BadRequestError if not)."""
    if not isinstance(value, list):
        raise BadRequestError(f"{key} must be a list of token ids")
    for token in value:
        if isinstance(token, bool) or not isinstance(token, int):
            raise BadRequestError(f"{key} must be a list of token ids, not {token!r}")
        if not 0 <= token < n_vocab:
            raise BadRequestError(
                f"{key} holds the token id {token}, which is not in the model's vocabulary "
                f"(0 to {n_vocab - 1})",
                hint="POST /tokenize gives a text's token ids for this model",
            )
    return value


def _checked(constraint: str, forcing: bool) -> str:
    """Return a request's grammar checked against the bounds, its forcing as the model's says.

    The engine compiles it when the request is submitted: a 400 names what it cannot enforce.
    Its forced text is spelled as the model's PARAMETER grammar_forcing says.
    """
    return with_forcing(grammar_bounds.check_grammar(constraint), forcing)
