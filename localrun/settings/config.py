"""Every LOCALRUN_* setting, declared once and read when it is used.

A setting is a name, a default, a parser and a line of help. Values are read from the environment
at call time (never frozen at import), so a test or a long-running server sees the current
environment. `localrun env` shows them (settings.view). The bounds that protect the machine are
declared in settings.limits and listed here with the rest.

A bad value of a setting raises ConfigError naming the variable, with a hint to fix or unset it;
the parsers that requests also use (`parse_duration` for a request's keep_alive,
`parse_host` for `serve --host`) raise ValueError for their caller to word. Of localrun this
wing imports only errors.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from localrun.errors import ConfigError
from localrun.host import private
from localrun.settings import limits, parse
from localrun.settings.setting import Setting

# Read elsewhere as config's (server.app, cli.commands.serve, params,
# engine.speculation.speculator, server.body).
DEFAULT_HOST = parse.DEFAULT_HOST
DEFAULT_PORT = parse.DEFAULT_PORT
DEFAULT_ORIGINS = parse.DEFAULT_ORIGINS
SPECULATE_MODES = parse.SPECULATE_MODES
parse_duration = parse.parse_duration
parse_host = parse.parse_host


def _default_home() -> Path:
    # platformdirs is imported here so that merely importing config stays cheap.
    from platformdirs import user_data_path

    return user_data_path("localrun", appauthor=False)


def _default_binary_cache() -> Path:
    # Where the binary's shell header unpacks it (scripts/maintenance/build_binary.py): the same
    # folder.
    from platformdirs import user_cache_path

    return user_cache_path("localrun", appauthor=False) / "binary"


def _default_runtime_builds() -> Path:
    from platformdirs import user_cache_path

    return user_cache_path("localrun", appauthor=False) / "runtime-builds"


def _models_default() -> Path:
    return home() / "models"


_GENERAL: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting(
            "LOCALRUN_HOME",
            "Folder for localrun's data: the model store, history and logs.",
            parse.parse_path,
            _default_home,
            shown_default="the platform's data folder (~/.local/share/localrun on Linux)",
        ),
        Setting(
            "LOCALRUN_MODELS",
            "Folder of the model store (blobs and manifests).",
            parse.parse_path,
            _models_default,
            shown_default="$LOCALRUN_HOME/models",
        ),
        Setting(
            "LOCALRUN_HOST",
            "Address of the localrun server: host[:port], or https://host[:port] for one that "
            "serves TLS.",
            parse_host,
            lambda: (DEFAULT_HOST, DEFAULT_PORT),
        ),
        Setting(
            "LOCALRUN_TLS_CERT",
            "Certificate (PEM, with its chain) that `localrun serve` answers HTTPS with; "
            "needs LOCALRUN_TLS_KEY.",
            parse.parse_optional_path,
            lambda: None,
        ),
        Setting(
            "LOCALRUN_TLS_KEY",
            "Private key (PEM, unencrypted, readable by its owner only) of LOCALRUN_TLS_CERT.",
            parse.parse_optional_path,
            lambda: None,
        ),
        Setting(
            "LOCALRUN_CA_FILE",
            "Certificates (PEM) that clients trust for an https:// LOCALRUN_HOST or upstream, "
            "instead of the system's store.",
            parse.parse_optional_path,
            lambda: None,
        ),
        Setting(
            "LOCALRUN_KEEP_ALIVE",
            "How long a model stays loaded after its last request (5m, 1h, 0, -1 = forever).",
            parse_duration,
            lambda: 300.0,
        ),
        Setting(
            "LOCALRUN_MAX_LOADED_MODELS",
            "Most models the server keeps loaded at once.",
            parse.parse_positive_int,
            lambda: 3,
        ),
        Setting(
            "LOCALRUN_MAX_JOBS",
            "Store jobs the server runs at once, in two lines: pulls and pushes in one; creates, "
            "quantizations and imports in the other (a stalled registry never holds a create). "
            "The next wait their turn (64 at most, then 503); the cores are shared out among "
            "those running.",
            parse.parse_positive_int,
            lambda: 2,
        ),
        Setting(
            "LOCALRUN_CONTEXT_LENGTH",
            "The context a model loads with unless its PARAMETER num_ctx or the request says "
            "otherwise (Ollama's OLLAMA_CONTEXT_LENGTH); never more than it was trained on "
            "(at most 16777216, as a request's num_ctx).",
            parse.parse_context_length,
            lambda: 4096,
        ),
        Setting(
            "LOCALRUN_NUM_PARALLEL",
            "Requests one loaded model answers at once (slots decoded in one batch; at most "
            "256, llama.cpp's bound).",
            parse.parse_num_parallel,
            lambda: 4,
        ),
        Setting(
            "LOCALRUN_WORKERS",
            "Comma-separated host:port of `localrun worker`s (llama.cpp's RPC servers) that "
            "each model the server loads is split across, by their memory; none by default.",
            parse.parse_endpoints,
            lambda: (),
        ),
        Setting(
            "LOCALRUN_MAX_QUEUE",
            "Requests the server accepts waiting for a slot; past it, 503 with Retry-After.",
            parse.parse_count,
            lambda: 512,
        ),
        Setting(
            "LOCALRUN_API_KEY",
            "Bearer token the server requires (required to listen beyond loopback).",
            parse.parse_api_key,
            lambda: "",
        ),
        Setting(
            "LOCALRUN_ORIGINS",
            "Comma-separated browser origins allowed by CORS (* wildcards a port).",
            parse.parse_origins,
            lambda: DEFAULT_ORIGINS,
        ),
        Setting(
            "LOCALRUN_TRUSTED_PROXIES",
            "Comma-separated addresses or networks of reverse proxies in front of the server, "
            "whose X-Forwarded-For and X-Forwarded-Proto it believes; none by default: a "
            "client's address (which per-client limits count) is the connection's peer.",
            parse.parse_networks,
            lambda: (),
        ),
        # Connection limits: a client that never finishes its request must not hold a socket
        # (and a file descriptor) forever; request heads arrive before the API key is checked.
        # A stored answer holds its whole conversation, input items and metadata: tens of MB
        # each when a client sends such (161 MB from 6 requests), so bytes are bounded too.
        # Tokenizing answers with every token: a large text makes a large answer, and llama.cpp
        # reads special tokens in time quadratic in their number (100k took minutes).
        # 15 million token ids (a 29 MB body) took a runner 50 s and 3 GB to spell out.
        # Images and audio in requests (localrun.request.media): each bounded before it is decoded.
        Setting(
            "LOCALRUN_SPECULATE",
            "Speculative decoding where neither the model nor the request sets the speculate "
            "parameter: auto (prompt lookup where it pays, and the DRAFT model if any), ngram "
            "(wherever text repeats), draft (the DRAFT model only), off.",
            parse.parse_speculate,
            lambda: "auto",
        ),
        Setting(
            "LOCALRUN_ANSWER_MEMORY",
            "Draft a repeated request's answer from the answer the same prompt got before, "
            "within one API key (or on a loopback-only server without one): 1 or 0.",
            parse.parse_bool,
            lambda: True,
        ),
        Setting(
            "LOCALRUN_UPSTREAM_CONNECT_TIMEOUT",
            "Longest wait for a connection to an upstream server (upstreams.toml).",
            parse_duration,
            lambda: 5.0,
        ),
        Setting(
            "LOCALRUN_UPSTREAM_READ_TIMEOUT",
            "Longest silence of an upstream server within an answer (its first piece "
            "included) before the request fails (and is tried on another upstream if nothing "
            "was sent yet).",
            parse_duration,
            lambda: 300.0,
        ),
        Setting(
            "LOCALRUN_UPSTREAM_HEALTH_INTERVAL",
            "How often the server reads each upstream's model list (its health check).",
            parse_duration,
            lambda: 10.0,
        ),
        Setting(
            "LOCALRUN_UPSTREAM_EJECT_AFTER",
            "Failures in a row (health checks or requests) that take an upstream out of routing.",
            parse.parse_positive_int,
            lambda: 3,
        ),
        Setting(
            "LOCALRUN_UPSTREAM_COOLDOWN",
            "How long an ejected upstream stays out before it is checked again.",
            parse_duration,
            lambda: 30.0,
        ),
        Setting(
            "LOCALRUN_OTHER_RUNNERS",
            "Other runners' models that `serve` lists beside the store's and that a first use "
            "imports in place (linked, as `localrun import` does): 1 for all, or some of "
            "ollama, hf, lmstudio, llama.cpp (comma-separated); 0 for none.",
            parse.parse_runners,
            lambda: (),
        ),
        Setting(
            "LOCALRUN_REGISTRY",
            "Ollama's library, where a name not in the store nor the catalog is pulled from "
            "(`name:tag`, `namespace/name:tag`): its URL, or off to never reach it.",
            parse.parse_registry,
            lambda: parse.DEFAULT_REGISTRY,
        ),
        Setting(
            "LOCALRUN_INSECURE_REGISTRIES",
            "Registries (host[:port], comma-separated) reached over plain HTTP; a loopback "
            "address always is.",
            parse.parse_origins,
            lambda: (),
        ),
        Setting(
            "LOCALRUN_REGISTRY_AUTH",
            "Logins for registries, space-separated: host=USER:PASSWORD or host=TOKEN (before "
            "Docker's ~/.docker/config.json); `localrun env` shows only the hosts.",
            parse.parse_registry_auth,
            lambda: (),
        ),
        Setting(
            "LOCALRUN_API_REGISTRIES",
            "Registries (host[:port], comma-separated) the server's API clients may pull from "
            "and push to with the server's logins, loopback and private ones included; else "
            "they pull from public registries and LOCALRUN_REGISTRY only, and push nowhere.",
            parse.parse_origins,
            lambda: (),
        ),
        Setting(
            "LOCALRUN_CPU_REPACK",
            "Whether llama.cpp repacks weights for the CPU's fastest kernels: on, off, or auto "
            "(on, except on CPUs with AMX, whose llama.cpp kernels crash: llama.cpp#20824).",
            parse.parse_auto,
            lambda: "auto",
        ),
        Setting(
            "LOCALRUN_MASKS_AHEAD",
            "Whether a constrained answer's next token mask is computed on a thread of its "
            "own while the batch decodes: on, off, or auto (on where a CPU is left idle "
            "meanwhile: the model on a GPU, or fewer decode threads than CPUs).",
            parse.parse_auto,
            lambda: "auto",
        ),
        Setting(
            "LOCALRUN_EXACT",
            "Whether the exact runtime (`localrun runtime install exact`: llama.cpp's CPU "
            "library built so that a token's logits do not depend on its batch) is loaded: "
            "auto (when installed), on (a warning when it is missing) or off.",
            parse.parse_auto,
            lambda: "auto",
        ),
        Setting(
            "LOCALRUN_RUNTIME",
            "GPU runtime that runs models: a name from `localrun runtime list`, auto (the best "
            "installed one for this machine) or cpu (no runtime: llama.cpp as installed); "
            "unset, the one `localrun runtime select` saved.",
            parse.parse_runtime,
            lambda: "",
        ),
        Setting(
            "LOCALRUN_RUNTIME_SOURCE",
            "llama-cpp-python source distribution (.tar.gz, or its unpacked folder) that "
            "`localrun runtime install` builds from, for machines without the package index.",
            parse.parse_optional_path,
            lambda: None,
        ),
        Setting(
            "LOCALRUN_RUNTIME_BUILDS",
            "Folder of runtime builds in progress: an interrupted install resumes from it.",
            parse.parse_path,
            _default_runtime_builds,
            shown_default="~/.cache/localrun/runtime-builds on Linux (the platform's cache)",
        ),
        Setting(
            "LOCALRUN_BINARY_CACHE",
            "Where the single binary unpacks itself on its first start (once per build); "
            "`localrun prune` removes other builds from it.",
            parse.parse_path,
            _default_binary_cache,
            shown_default="~/.cache/localrun/binary on Linux (the platform's cache folder)",
        ),
        Setting(
            "LOCALRUN_DEBUG",
            "Show tracebacks and debug output (1/0).",
            parse.parse_bool,
            lambda: False,
        ),
    )
}

# Every setting, `localrun env`'s order: the general ones, then the bounds (settings.limits).
SETTINGS: dict[str, Setting] = {**_GENERAL, **limits.LIMITS}


def home() -> Path:
    return SETTINGS["LOCALRUN_HOME"].value()  # type: ignore[no-any-return]


def make_home() -> None:
    """Create LOCALRUN_HOME where it does not exist yet, as its owner's alone (0700, parents too).

    It holds the chat history (localrun.host.private). One that exists is left as it is;
    `localrun info` says when it is open to others. One that cannot be made is for the write that
    follows to report.
    """
    with contextlib.suppress(OSError):
        private.private_dir(home(), owned=False)


def make_dirs(path: Path) -> None:
    """Make `path` and its parents, with LOCALRUN_HOME made first (`make_home`) where it is inside.

    So a folder of localrun's never makes the home open to others.
    """
    if path.is_relative_to(home()):
        make_home()
    path.mkdir(parents=True, exist_ok=True)


def models_dir() -> Path:
    return SETTINGS["LOCALRUN_MODELS"].value()  # type: ignore[no-any-return]


def host() -> tuple[str, int]:
    return SETTINGS["LOCALRUN_HOST"].value()  # type: ignore[no-any-return]


def host_is_https() -> bool:
    """Whether LOCALRUN_HOST names an https:// server."""
    return (os.environ.get("LOCALRUN_HOST") or "").strip().lower().startswith("https://")


def tls_pair() -> tuple[Path | None, Path | None]:
    return SETTINGS["LOCALRUN_TLS_CERT"].value(), SETTINGS["LOCALRUN_TLS_KEY"].value()


def ca_file() -> Path | None:
    return SETTINGS["LOCALRUN_CA_FILE"].value()  # type: ignore[no-any-return]


def keep_alive() -> float:
    return SETTINGS["LOCALRUN_KEEP_ALIVE"].value()  # type: ignore[no-any-return]


def max_loaded_models() -> int:
    return SETTINGS["LOCALRUN_MAX_LOADED_MODELS"].value()  # type: ignore[no-any-return]


def max_jobs() -> int:
    return SETTINGS["LOCALRUN_MAX_JOBS"].value()  # type: ignore[no-any-return]


def context_length() -> int:
    return SETTINGS["LOCALRUN_CONTEXT_LENGTH"].value()  # type: ignore[no-any-return]


def num_parallel() -> int:
    return SETTINGS["LOCALRUN_NUM_PARALLEL"].value()  # type: ignore[no-any-return]


def workers() -> tuple[str, ...]:
    """The RPC workers a model is split across (LOCALRUN_WORKERS), as host:port."""
    return SETTINGS["LOCALRUN_WORKERS"].value()  # type: ignore[no-any-return]


def max_queue() -> int:
    return SETTINGS["LOCALRUN_MAX_QUEUE"].value()  # type: ignore[no-any-return]


def api_key() -> str:
    return SETTINGS["LOCALRUN_API_KEY"].value()  # type: ignore[no-any-return]


def origins() -> tuple[str, ...]:
    return SETTINGS["LOCALRUN_ORIGINS"].value()  # type: ignore[no-any-return]


def trusted_proxies() -> tuple[str, ...]:
    """The proxies whose forwarding headers name the client (none: the peer is the client)."""
    return SETTINGS["LOCALRUN_TRUSTED_PROXIES"].value()  # type: ignore[no-any-return]


def responses_dir() -> Path:
    """Where stored Responses API answers live (under LOCALRUN_HOME)."""
    return home() / "responses"


def speculate() -> str:
    return SETTINGS["LOCALRUN_SPECULATE"].value()  # type: ignore[no-any-return]


def answer_memory() -> bool:
    return SETTINGS["LOCALRUN_ANSWER_MEMORY"].value()  # type: ignore[no-any-return]


def upstream_connect_timeout() -> float:
    return SETTINGS["LOCALRUN_UPSTREAM_CONNECT_TIMEOUT"].value()  # type: ignore[no-any-return]


def upstream_read_timeout() -> float:
    return SETTINGS["LOCALRUN_UPSTREAM_READ_TIMEOUT"].value()  # type: ignore[no-any-return]


def upstream_health_interval() -> float:
    return SETTINGS["LOCALRUN_UPSTREAM_HEALTH_INTERVAL"].value()  # type: ignore[no-any-return]


def upstream_eject_after() -> int:
    return SETTINGS["LOCALRUN_UPSTREAM_EJECT_AFTER"].value()  # type: ignore[no-any-return]


def upstream_cooldown() -> float:
    return SETTINGS["LOCALRUN_UPSTREAM_COOLDOWN"].value()  # type: ignore[no-any-return]


def other_runners() -> tuple[str, ...]:
    return SETTINGS["LOCALRUN_OTHER_RUNNERS"].value()  # type: ignore[no-any-return]


def registry() -> str:
    return SETTINGS["LOCALRUN_REGISTRY"].value()  # type: ignore[no-any-return]


def insecure_registries() -> tuple[str, ...]:
    return tuple(h.lower() for h in SETTINGS["LOCALRUN_INSECURE_REGISTRIES"].value())


def api_registries() -> tuple[str, ...]:
    return tuple(h.lower() for h in SETTINGS["LOCALRUN_API_REGISTRIES"].value())


def registry_auth() -> tuple[tuple[str, str], ...]:
    return SETTINGS["LOCALRUN_REGISTRY_AUTH"].value()  # type: ignore[no-any-return]


def cpu_repack() -> str:
    return SETTINGS["LOCALRUN_CPU_REPACK"].value()  # type: ignore[no-any-return]


def masks_ahead() -> str:
    return SETTINGS["LOCALRUN_MASKS_AHEAD"].value()  # type: ignore[no-any-return]


def exact() -> str:
    return SETTINGS["LOCALRUN_EXACT"].value()  # type: ignore[no-any-return]


def runtime() -> str:
    return SETTINGS["LOCALRUN_RUNTIME"].value()  # type: ignore[no-any-return]


def runtime_source() -> Path | None:
    return SETTINGS["LOCALRUN_RUNTIME_SOURCE"].value()  # type: ignore[no-any-return]


def runtime_builds() -> Path:
    return SETTINGS["LOCALRUN_RUNTIME_BUILDS"].value()  # type: ignore[no-any-return]


def binary_cache() -> Path:
    return SETTINGS["LOCALRUN_BINARY_CACHE"].value()  # type: ignore[no-any-return]


def debug() -> bool:
    try:
        return bool(SETTINGS["LOCALRUN_DEBUG"].value())
    except ConfigError:
        return False
