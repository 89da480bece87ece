"""One exception tree for everything localrun reports to a user.

Every class has a stable `code` and an optional `hint`, the next command to run. The code
travels over the wire and the client rebuilds the class from it, so never match on message text.
"""

from __future__ import annotations

from typing import Any, ClassVar

# The class tree: what each class means and, for the server's errors, the HTTP status.
#
# LocalrunError                   code "error"
# ├── ConfigError                 a LOCALRUN_* setting has a bad value
# ├── InvalidNameError            a model reference breaks the name grammar
# ├── ModelNotFoundError          no such model in the store or the catalog
# ├── InvalidParameterError       an unknown PARAMETER, or a value of the wrong type or range
# ├── ModelfileError              a Modelfile that does not parse; carries line and column
# ├── FileError                   a file the user named cannot be used
# │   ├── FileNotFoundError_      it does not exist
# │   ├── NotRegularFileError     a directory, FIFO, socket or device
# │   ├── InvalidGGUFError        not a well-formed GGUF file (or the wrong kind of GGUF)
# │   ├── ImportSourceError       another runner's store holds what cannot be imported
# │   └── CheckpointError         a safetensors checkpoint or adapter that cannot be converted
# ├── HubError                    a model hub (Hugging Face, ModelScope)
# │   ├── HubAuthError            the repository is gated or private: a token is needed
# │   ├── HubUnreachableError     no connection to the hub (or offline mode is on)
# │   └── DownloadError           a transfer failed, or delivered the wrong bytes
# ├── EngineError                 the inference engine
# │   ├── ModelLoadError          llama.cpp could not load a model or adapter
# │   ├── ContextOverflowError    the prompt does not fit in the context window
# │   ├── TemplateError           the chat template failed to render
# │   │   └── TemplateLimitError  it ran out of its time, output or step budget
# │   └── GPURuntimeError         a GPU runtime (`localrun runtime`)
# │       ├── RuntimeNotFoundError    no installed runtime of that name
# │       ├── ToolchainError          what a runtime's build needs is missing
# │       └── RuntimeBuildError       its configure or compile failed (the log says why)
# ├── ServerError                 the localrun server and its runners
# │   ├── BusyError               the request queue is full: retry later (503, Retry-After)
# │   │   └── TooManyRequestsError    one client's share is taken: retry later (429)
# │   ├── RunnerDiedError         the runner process of a model exited mid-request (500)
# │   ├── UpstreamError           an upstream server failed a request routed to it (502)
# │   ├── ServerUnreachableError  no localrun server answers at LOCALRUN_HOST (client side)
# │   │   └── ServerTLSError      one answers, but TLS failed: an untrusted certificate, no TLS
# │   ├── BadRequestError         a request the API cannot accept (400)
# │   ├── NotFoundError           an API object (a stored response) that does not exist (404)
# │   ├── AnswerSchemaError       an answer that breaks its request's schema (422)
# │   ├── UnauthorizedError       a missing or wrong API key (401)
# │   ├── ForbiddenError          a Host or Origin the server does not serve (403)
# │   ├── RequestTooLargeError    a request body over LOCALRUN_MAX_REQUEST_BYTES (413)
# │   └── RequestTimeoutError     a request body that stalled past LOCALRUN_BODY_TIMEOUT (408)
# └── StoreError                  the model store itself
#     ├── InvalidDigestError      a digest that is not sha256:<64 hex>
#     ├── CorruptBlobError        a blob whose content no longer matches its digest
#     ├── MissingBlobError        a manifest names a blob that is not there
#     └── DiskFullError           no space left while writing


class LocalrunError(Exception):
    """Base of every error localrun shows to a user."""

    code: ClassVar[str] = "error"
    by_code: ClassVar[dict[str, type[LocalrunError]]] = {}
    # Attributes (numbers) that travel with the error beside its message, for a surface that
    # words it in its own way (ContextOverflowError's sizes).
    facts: ClassVar[tuple[str, ...]] = ()

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        known = LocalrunError.by_code.get(cls.code)
        if known is not None and known is not cls:
            # A subclass may travel as its parent (the client rebuilds the parent).
            if not issubclass(cls, known) or "wire_as_parent" not in cls.__dict__:
                raise TypeError(f"error code {cls.code!r} is used twice")
            return
        LocalrunError.by_code[cls.code] = cls

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "code": self.code,
            "type": type(self).__name__,
            "message": self.message,
        }
        if self.hint:
            out["hint"] = self.hint
        for name in self.facts:
            value = getattr(self, name, None)
            if isinstance(value, int) and not isinstance(value, bool):
                out[name] = value
        return out

    def copy(self) -> LocalrunError:
        """A fresh instance of this error, for each request that shares it (one traceback each)."""
        clone = type(self).__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.args = self.args
        return clone

    @staticmethod
    def from_dict(data: dict[str, Any]) -> LocalrunError:
        """Rebuild the typed error from its wire form (unknown codes become LocalrunError)."""
        cls = LocalrunError.by_code.get(str(data.get("code", "")), LocalrunError)
        err = cls.__new__(cls)
        LocalrunError.__init__(
            err, str(data.get("message", "unknown error")), hint=data.get("hint") or None
        )
        for name in cls.facts:
            value = data.get(name)
            setattr(err, name, value if isinstance(value, int) else None)
        return err


LocalrunError.by_code["error"] = LocalrunError


class ConfigError(LocalrunError):
    """A LOCALRUN_* setting (or upstreams.toml) has a bad value."""

    code = "config_error"


class InvalidNameError(LocalrunError):
    """A model reference breaks the name grammar."""

    code = "invalid_name"


class ModelNotFoundError(LocalrunError):
    """No such model in the store, the catalog or the registry."""

    code = "model_not_found"
    suggest = False  # whether the nearest known names may replace the hint (catalog.suggest)

    def __init__(self, name: str, *, hint: str | None = None) -> None:
        super().__init__(
            f"model '{name}' not found",
            hint=hint or f"try `localrun list` or `localrun pull {name}`",
        )
        self.name = name
        self.suggest = hint is None


class InvalidParameterError(LocalrunError):
    """An unknown PARAMETER, or a value of the wrong type or range."""

    code = "invalid_parameter"


class ModelfileError(LocalrunError):
    """A Modelfile that does not parse; `line` and `column` are 1-based."""

    code = "modelfile_error"

    def __init__(
        self,
        message: str,
        *,
        line: int,
        column: int = 1,
        path: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.reason = message
        self.line = line
        self.column = column
        self.path = path
        where = f"{path or 'Modelfile'}:{line}:{column}"
        super().__init__(f"{where}: {message}", hint=hint)

    def with_path(self, path: str) -> ModelfileError:
        return ModelfileError(
            self.reason, line=self.line, column=self.column, path=path, hint=self.hint
        )


class FileError(LocalrunError):
    """A file the user named cannot be used."""

    code = "file_error"


class FileNotFoundError_(FileError):
    """A file the user named does not exist."""

    code = "file_not_found"


class NotRegularFileError(FileError):
    """A path that is a directory, FIFO, socket or device, not a file."""

    code = "not_regular_file"


class InvalidGGUFError(FileError):
    """Not a well-formed GGUF file (or the wrong kind of GGUF)."""

    code = "invalid_gguf"
    # Set by gguf.header.invalid: the file as it was named, and what is wrong with it.
    file: str = ""
    reason: str = ""


class ImportSourceError(FileError):
    """Another runner's store holds what cannot be imported."""

    code = "import_source"


class CheckpointError(FileError):
    """A safetensors checkpoint or PEFT adapter that cannot be converted."""

    code = "invalid_checkpoint"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(
            message,
            hint=hint
            or "FROM takes a checkpoint folder as save_pretrained writes it (config.json, the "
            "tokenizer files, *.safetensors), ADAPTER one as PEFT writes it",
        )


class HubError(LocalrunError):
    """A model hub or registry (Hugging Face, ModelScope, an OCI registry) failed."""

    code = "hub_error"


class HubAuthError(HubError):
    """The repository is gated or private: a token or login is needed."""

    code = "hub_auth"


class HubUnreachableError(HubError):
    """No connection to the hub (or offline mode is on)."""

    code = "hub_unreachable"


class DownloadError(HubError):
    """A transfer failed, or delivered the wrong bytes."""

    code = "download_error"


class EngineError(LocalrunError):
    """The inference engine failed."""

    code = "engine_error"


class ModelLoadError(EngineError):
    """llama.cpp could not load a model or adapter."""

    code = "model_load_error"


class ContextOverflowError(EngineError):
    """The prompt does not fit in the context window.

    `tokens` is the prompt's length, `limit` the context's and `trained` the context the model
    was trained on; each is None where not known. Each API words it as its own server does
    (localrun.request.overflow), since agents match the words to compact a conversation.
    """

    # OpenAI's code for it: OpenAI clients and agent frameworks catch it to compact a
    # conversation.
    code = "context_length_exceeded"
    facts = ("tokens", "limit", "trained")

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        tokens: int | None = None,
        limit: int | None = None,
        trained: int | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.tokens, self.limit, self.trained = tokens, limit, trained


class TemplateError(EngineError):
    """The chat template failed to parse or render."""

    code = "template_error"


class TemplateLimitError(TemplateError):
    """A template stopped for its time, memory or loop budget, not for what it was given.

    On the wire it is a template_error, so a client rebuilds a TemplateError.
    """

    code = "template_error"
    wire_as_parent = True


class GPURuntimeError(EngineError):
    """A GPU runtime (`localrun runtime`) failed."""

    code = "runtime_error"


class RuntimeNotFoundError(GPURuntimeError):
    """No installed runtime of that name."""

    code = "runtime_not_found"


class ToolchainError(GPURuntimeError):
    """What a runtime's build needs (a compiler, CUDA, Vulkan headers) is missing."""

    code = "toolchain_missing"


class RuntimeBuildError(GPURuntimeError):
    """A runtime's configure or compile failed (its log says why)."""

    code = "runtime_build_failed"


class ServerError(LocalrunError):
    """The localrun server or its runners failed."""

    code = "server_error"


class BusyError(ServerError):
    """The request queue is full: retry later (503 with Retry-After)."""

    code = "busy"

    def __init__(self, message: str, *, hint: str | None = None, retry_after: int = 1) -> None:
        super().__init__(message, hint=hint)
        self.retry_after = retry_after


class TooManyRequestsError(BusyError):
    """One client already holds as many of something as it may at once: retry when one ends.

    Background responses are one such thing. The server answers 429 with Retry-After.
    """

    code = "rate_limit_exceeded"


class RunnerDiedError(ServerError):
    """The runner process of a model exited mid-request."""

    code = "runner_died"


class WorkerError(ServerError):
    """An RPC worker holding part of a model could not be reached, or answered wrongly."""

    code = "worker_failed"


class UpstreamError(ServerError):
    """An upstream server failed a request routed to it."""

    code = "upstream_error"


class ServerUnreachableError(ServerError):
    """No localrun server answers at LOCALRUN_HOST (client side)."""

    code = "server_unreachable"


class ServerTLSError(ServerUnreachableError):
    """A server answers, but TLS failed: an untrusted certificate, or no TLS."""

    code = "server_tls"


class BadRequestError(ServerError):
    """A request the API cannot accept."""

    code = "bad_request"


class NotFoundError(ServerError):
    """An API object (a stored response, a route's object) that does not exist."""

    code = "not_found"


class AnswerSchemaError(ServerError):
    """An answer that does not validate against the schema its request gave.

    It happens where the engine did not enforce a keyword, as with Ollama's lenient `format`.
    """

    code = "answer_schema"


class UnauthorizedError(ServerError):
    """A missing or wrong API key."""

    code = "unauthorized"


class ForbiddenError(ServerError):
    """A Host or Origin the server does not serve, or an action it does not allow."""

    code = "forbidden"


class RequestTooLargeError(ServerError):
    """A request body over LOCALRUN_MAX_REQUEST_BYTES."""

    code = "request_too_large"


class RequestTimeoutError(ServerError):
    """A request body that stalled past LOCALRUN_BODY_TIMEOUT."""

    code = "request_timeout"


class StoreError(LocalrunError):
    """The model store itself failed."""

    code = "store_error"


class InvalidDigestError(StoreError):
    """A digest that is not sha256:<64 hex>."""

    code = "invalid_digest"


class CorruptBlobError(StoreError):
    """A blob whose content no longer matches its digest."""

    code = "corrupt_blob"


class MissingBlobError(StoreError):
    """A manifest names a blob that is not there."""

    code = "missing_blob"


class DiskFullError(StoreError):
    """No space left while writing."""

    code = "disk_full"


# The code localrun 0.1 servers sent for ContextOverflowError: the client still understands it.
LocalrunError.by_code["context_overflow"] = ContextOverflowError
