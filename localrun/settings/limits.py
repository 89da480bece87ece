"""The bounds that protect the machine, each a LOCALRUN_* setting declared once with its default.

Every bound a request, a model file or an upstream meets is declared here: body size, nesting depth,
grammar size, template time and output, tokens and media per request, stored Responses, connections
and their timeouts, a runner's load time, the disk prompt cache, an upstream's answer. Each is
checked at the edge where the input enters, and its violation is a typed error (400, 413, 503),
never a RecursionError or a MemoryError that escapes as a 500. config.SETTINGS lists these with
every other setting (`localrun env`).
"""

from __future__ import annotations

from localrun.settings import parse
from localrun.settings.parse import parse_duration
from localrun.settings.setting import Setting

LIMITS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting(
            "LOCALRUN_MAX_REQUEST_BYTES",
            "Largest request body the server reads (blob uploads excepted).",
            parse.parse_positive_int,
            lambda: 32 * 1024 * 1024,
        ),
        Setting(
            "LOCALRUN_HEADER_TIMEOUT",
            "Time a client has to send a whole request head; slower connections are closed.",
            parse.parse_timeout,
            lambda: 10.0,
        ),
        Setting(
            "LOCALRUN_BODY_TIMEOUT",
            "Time a request body may bring no bytes (idle, not total: uploads are large).",
            parse.parse_timeout,
            lambda: 60.0,
        ),
        Setting(
            "LOCALRUN_IDLE_TIMEOUT",
            "Time an idle keep-alive connection stays open between requests.",
            parse.parse_timeout,
            lambda: 5.0,
        ),
        Setting(
            "LOCALRUN_MAX_CONNECTIONS",
            "Most open connections (kept below the file limit); at the cap a new one evicts "
            "the oldest still sending its request head.",
            parse.parse_positive_int,
            lambda: 1000,
        ),
        Setting(
            "LOCALRUN_MAX_CONNECTIONS_PER_CLIENT",
            "Most open connections from one client address (IPv6: one /64).",
            parse.parse_positive_int,
            lambda: 256,
        ),
        Setting(
            "LOCALRUN_MAX_JSON_DEPTH",
            "Deepest nesting of JSON a request may send (in its body or in JSON strings in it, "
            "such as tool calls' arguments; at most 256, since what walks a value later "
            "recurses).",
            parse.parse_json_depth,
            lambda: 100,
        ),
        Setting(
            "LOCALRUN_MAX_CHOICES",
            "Most answers one request may ask for (OpenAI's n); each takes a slot.",
            parse.parse_positive_int,
            lambda: 8,
        ),
        Setting(
            "LOCALRUN_MAX_QUESTIONS",
            "Most questions one /v1/systemone request may ask; each reads its prompt once.",
            parse.parse_positive_int,
            lambda: 32,
        ),
        Setting(
            "LOCALRUN_MAX_DRAWS",
            "Most times a sampled answer, sent whole, is drawn when it breaks the part of its "
            "schema checked after (uniqueItems, not ...); then it is refused (422).",
            parse.parse_positive_int,
            lambda: 4,
        ),
        Setting(
            "LOCALRUN_DRAW_TIME",
            "No answer is drawn again once its request has run this long (then: refused).",
            parse.parse_timeout,
            lambda: 60.0,
        ),
        Setting(
            "LOCALRUN_MAX_PROMPTS",
            "Most prompts one /v1/completions request may hold (a list: an answer each, all "
            "queued at once; evaluation harnesses send a batch).",
            parse.parse_positive_int,
            lambda: 64,
        ),
        Setting(
            "LOCALRUN_MAX_PROMPT_LOGPROBS",
            "Most log-probabilities one request's prompts are scored with (echo with logprobs, "
            "prompt_logprobs): each prompt token counts 1 plus the alternatives asked for it; "
            "past it, 400. The default takes 64 prompts of 2,048 tokens with one alternative, "
            "or 12,000 tokens with 20.",
            parse.parse_positive_int,
            lambda: 262_144,
        ),
        Setting(
            "LOCALRUN_RESPONSES_MAX",
            "Most stored Responses API answers (store: true) kept; the oldest go first; 0 "
            "stores none.",
            parse.parse_count,
            lambda: 1000,
        ),
        Setting(
            "LOCALRUN_RESPONSES_MAX_AGE",
            "How long a stored Responses API answer is kept (720h, 30m, -1 = forever).",
            parse_duration,
            lambda: 30 * 86400.0,
        ),
        Setting(
            "LOCALRUN_RESPONSES_MAX_BYTES",
            "Disk space for stored Responses API answers (the oldest go first).",
            parse.parse_positive_int,
            lambda: 256 * 1024 * 1024,
        ),
        Setting(
            "LOCALRUN_RESPONSES_MAX_RECORD_BYTES",
            "Largest one stored Responses API answer (its conversation included) may be: a "
            "request whose record would be larger is refused (400); store: false is not bounded.",
            parse.parse_positive_int,
            lambda: 16 * 1024 * 1024,
        ),
        Setting(
            "LOCALRUN_RESPONSES_RETRIEVALS_PER_CLIENT",
            "Most stored Responses API answers (or their input items) one client address reads "
            "at once; past it, 429. A stored answer can be 16 MB, its replayed stream three "
            "times that.",
            parse.parse_positive_int,
            lambda: 4,
        ),
        Setting(
            "LOCALRUN_RESPONSES_BACKGROUND_MAX_PER_CLIENT",
            "Most background Responses API answers one client address (IPv6: one /64) may have "
            "queued or running at once; past it a new one is refused (429): each generates "
            "whether or not anyone listens.",
            parse.parse_positive_int,
            lambda: 32,
        ),
        Setting(
            "LOCALRUN_MAX_GRAMMAR_BYTES",
            "Largest grammar a request's JSON schema or forced call may build (its schemas "
            "included): compiling one costs a runner up to a second.",
            parse.parse_positive_int,
            lambda: 1024 * 1024,
        ),
        Setting(
            "LOCALRUN_MAX_TOKENIZE_BYTES",
            "Largest text /tokenize reads (its tokens come back in one answer).",
            parse.parse_positive_int,
            lambda: 2 * 1024 * 1024,
        ),
        Setting(
            "LOCALRUN_MAX_TOKEN_PIECES",
            "Most tokens a /tokenize answer spells out with their pieces (with_pieces).",
            parse.parse_positive_int,
            lambda: 65536,
        ),
        Setting(
            "LOCALRUN_MAX_DETOKENIZE_TOKENS",
            "Most token ids /detokenize turns back into text in one request.",
            parse.parse_positive_int,
            lambda: 262144,
        ),
        Setting(
            "LOCALRUN_MAX_SPECIAL_TOKENS",
            "Most special tokens (<|im_start|> ...) read as such in one text or prompt: "
            "llama.cpp reads them in time quadratic in their number.",
            parse.parse_positive_int,
            lambda: 8192,
        ),
        Setting(
            "LOCALRUN_MAX_BYTE_FALLBACK",
            "Most characters of one text that a SentencePiece vocabulary (Llama 2, Mistral, "
            "Gemma) lacks and spells byte by byte: llama.cpp does that in time quadratic in their "
            "number (200k took 7.8 s).",
            parse.parse_positive_int,
            lambda: 65536,
        ),
        Setting(
            "LOCALRUN_MAX_MEDIA_BYTES",
            "Largest image or audio file one request may send (bytes, after base64).",
            parse.parse_positive_int,
            lambda: 20 * 1024 * 1024,
        ),
        Setting(
            "LOCALRUN_MAX_MEDIA",
            "Most images and audio files in one request.",
            parse.parse_positive_int,
            lambda: 16,
        ),
        Setting(
            "LOCALRUN_MAX_IMAGE_PIXELS",
            "Most pixels of one image (width x height), read from its header before decoding.",
            parse.parse_positive_int,
            lambda: 4096 * 4096,
        ),
        Setting(
            "LOCALRUN_MAX_AUDIO_SECONDS",
            "Longest audio one request may send, in seconds.",
            parse.parse_positive_int,
            lambda: 600,
        ),
        Setting(
            "LOCALRUN_IMAGE_URL_HOSTS",
            "Hosts the server may fetch http(s) image URLs from for a client (* for any); none "
            "by default.",
            parse.parse_hosts,
            lambda: (),
        ),
        Setting(
            "LOCALRUN_TEMPLATE_TIMEOUT",
            "Longest a chat template may take to render one prompt (2s, 500ms).",
            parse_duration,
            lambda: 2.0,
        ),
        Setting(
            "LOCALRUN_CHECK_TIMEOUT",
            "Longest the check of a request's JSON schema, or of an answer against it, may "
            "take where the engine cannot enforce all of it (2s, 500ms); it runs in a child "
            "process of the server, stopped past this, and the request is refused.",
            parse.parse_timeout,
            lambda: 5.0,
        ),
        Setting(
            "LOCALRUN_TEMPLATE_MAX_BYTES",
            "Largest value (and prompt) a chat template may build.",
            parse.parse_positive_int,
            lambda: 4 * 1024 * 1024,
        ),
        Setting(
            "LOCALRUN_LOAD_TIMEOUT",
            "Longest a model may take to load before its runner is stopped (5m, 30s).",
            parse.parse_timeout,
            lambda: 300.0,
        ),
        Setting(
            "LOCALRUN_WORKER_TIMEOUT",
            "Longest an RPC worker may take to answer one of its calls before the answer it "
            "serves ends with an error; the next load asks every worker again (2m, 30s).",
            parse.parse_timeout,
            lambda: 120.0,
        ),
        Setting(
            "LOCALRUN_PROMPT_CACHE_MAX_BYTES",
            "Disk space for the state of models' SYSTEM prompts and MESSAGE turns, and of the "
            "conversations a closing runner held, kept between processes in "
            "$LOCALRUN_HOME/cache/prompts (least recently used removed first); 0 turns it off.",
            parse.parse_count,
            lambda: 2 * 1024**3,
        ),
        Setting(
            "LOCALRUN_CHECKPOINT_EVERY",
            "Tokens between two checkpoints of a sliding-window, recurrent or hybrid model's "
            "memory while it reads a long prompt (one is also kept a token before its end).",
            parse.parse_positive_int,
            lambda: 2048,
        ),
        Setting(
            "LOCALRUN_CHECKPOINTS",
            "Checkpoints of that memory kept per slot, at most; 0 keeps none (a prompt parting "
            "from what a slot holds further back than it can cut is read again).",
            parse.parse_count,
            lambda: 16,
        ),
        Setting(
            "LOCALRUN_CHECKPOINT_MAX_BYTES",
            "Memory the checkpoints of one slot may take, at most (thinned where they are closest; "
            "the newest is kept whatever its size).",
            parse.parse_count,
            lambda: 256 * 1024 * 1024,
        ),
        Setting(
            "LOCALRUN_UPSTREAM_MAX_BYTES",
            "Largest answer read from an upstream, decompressed (a streamed one in all; a "
            "streamed line and a model list at most 4 MiB each): past it the answer is an error, "
            "and the gateway stays small.",
            parse.parse_positive_int,
            lambda: 64 * 1024 * 1024,
        ),
        Setting(
            "LOCALRUN_PULL_MAX_MEMORY",
            "Memory (bytes) a pull or push job of the server may take above what it holds at "
            "its start (Linux: RLIMIT_DATA); past it the job ends with an error (create and "
            "import jobs have no cap: a big model's conversion takes GBs).",
            parse.parse_positive_int,
            lambda: 512 * 1024 * 1024,
        ),
        Setting(
            "LOCALRUN_UPSTREAM_MAX_TOKENS",
            "Most tokens of one upstream answer forwarded when the client sets no limit; past "
            "it (or the client's own) the answer ends as a length-limited one.",
            parse.parse_positive_int,
            lambda: 131072,
        ),
    )
}


def max_request_bytes() -> int:
    return LIMITS["LOCALRUN_MAX_REQUEST_BYTES"].value()  # type: ignore[no-any-return]


def header_timeout() -> float:
    return LIMITS["LOCALRUN_HEADER_TIMEOUT"].value()  # type: ignore[no-any-return]


def body_timeout() -> float:
    return LIMITS["LOCALRUN_BODY_TIMEOUT"].value()  # type: ignore[no-any-return]


def idle_timeout() -> float:
    return LIMITS["LOCALRUN_IDLE_TIMEOUT"].value()  # type: ignore[no-any-return]


def max_connections() -> int:
    return LIMITS["LOCALRUN_MAX_CONNECTIONS"].value()  # type: ignore[no-any-return]


def max_connections_per_client() -> int:
    return LIMITS["LOCALRUN_MAX_CONNECTIONS_PER_CLIENT"].value()  # type: ignore[no-any-return]


def max_json_depth() -> int:
    return LIMITS["LOCALRUN_MAX_JSON_DEPTH"].value()  # type: ignore[no-any-return]


def max_choices() -> int:
    return LIMITS["LOCALRUN_MAX_CHOICES"].value()  # type: ignore[no-any-return]


def max_questions() -> int:
    return LIMITS["LOCALRUN_MAX_QUESTIONS"].value()  # type: ignore[no-any-return]


def max_draws() -> int:
    return LIMITS["LOCALRUN_MAX_DRAWS"].value()  # type: ignore[no-any-return]


def draw_time() -> float:
    return LIMITS["LOCALRUN_DRAW_TIME"].value()  # type: ignore[no-any-return]


def max_prompts() -> int:
    return LIMITS["LOCALRUN_MAX_PROMPTS"].value()  # type: ignore[no-any-return]


def max_prompt_logprobs() -> int:
    return LIMITS["LOCALRUN_MAX_PROMPT_LOGPROBS"].value()  # type: ignore[no-any-return]


def responses_max() -> int:
    return LIMITS["LOCALRUN_RESPONSES_MAX"].value()  # type: ignore[no-any-return]


def responses_max_age() -> float:
    return LIMITS["LOCALRUN_RESPONSES_MAX_AGE"].value()  # type: ignore[no-any-return]


def responses_max_bytes() -> int:
    return LIMITS["LOCALRUN_RESPONSES_MAX_BYTES"].value()  # type: ignore[no-any-return]


def responses_max_record_bytes() -> int:
    return LIMITS["LOCALRUN_RESPONSES_MAX_RECORD_BYTES"].value()  # type: ignore[no-any-return]


def responses_background_max_per_client() -> int:
    return LIMITS["LOCALRUN_RESPONSES_BACKGROUND_MAX_PER_CLIENT"].value()  # type: ignore[no-any-return]


def responses_retrievals_per_client() -> int:
    return LIMITS["LOCALRUN_RESPONSES_RETRIEVALS_PER_CLIENT"].value()  # type: ignore[no-any-return]


def max_grammar_bytes() -> int:
    return LIMITS["LOCALRUN_MAX_GRAMMAR_BYTES"].value()  # type: ignore[no-any-return]


def upstream_max_bytes() -> int:
    return LIMITS["LOCALRUN_UPSTREAM_MAX_BYTES"].value()  # type: ignore[no-any-return]


def upstream_max_tokens() -> int:
    return LIMITS["LOCALRUN_UPSTREAM_MAX_TOKENS"].value()  # type: ignore[no-any-return]


def max_tokenize_bytes() -> int:
    return LIMITS["LOCALRUN_MAX_TOKENIZE_BYTES"].value()  # type: ignore[no-any-return]


def max_token_pieces() -> int:
    return LIMITS["LOCALRUN_MAX_TOKEN_PIECES"].value()  # type: ignore[no-any-return]


def max_detokenize_tokens() -> int:
    return LIMITS["LOCALRUN_MAX_DETOKENIZE_TOKENS"].value()  # type: ignore[no-any-return]


def max_special_tokens() -> int:
    return LIMITS["LOCALRUN_MAX_SPECIAL_TOKENS"].value()  # type: ignore[no-any-return]


def max_byte_fallback() -> int:
    return LIMITS["LOCALRUN_MAX_BYTE_FALLBACK"].value()  # type: ignore[no-any-return]


def max_media_bytes() -> int:
    return LIMITS["LOCALRUN_MAX_MEDIA_BYTES"].value()  # type: ignore[no-any-return]


def max_media() -> int:
    return LIMITS["LOCALRUN_MAX_MEDIA"].value()  # type: ignore[no-any-return]


def max_image_pixels() -> int:
    return LIMITS["LOCALRUN_MAX_IMAGE_PIXELS"].value()  # type: ignore[no-any-return]


def image_url_hosts() -> tuple[str, ...]:
    return LIMITS["LOCALRUN_IMAGE_URL_HOSTS"].value()  # type: ignore[no-any-return]


def max_audio_seconds() -> int:
    return LIMITS["LOCALRUN_MAX_AUDIO_SECONDS"].value()  # type: ignore[no-any-return]


def template_timeout() -> float:
    return LIMITS["LOCALRUN_TEMPLATE_TIMEOUT"].value()  # type: ignore[no-any-return]


def check_timeout() -> float:
    return LIMITS["LOCALRUN_CHECK_TIMEOUT"].value()  # type: ignore[no-any-return]


def template_max_bytes() -> int:
    return LIMITS["LOCALRUN_TEMPLATE_MAX_BYTES"].value()  # type: ignore[no-any-return]


def load_timeout() -> float:
    return LIMITS["LOCALRUN_LOAD_TIMEOUT"].value()  # type: ignore[no-any-return]


def worker_timeout() -> float:
    return LIMITS["LOCALRUN_WORKER_TIMEOUT"].value()  # type: ignore[no-any-return]


def prompt_cache_max_bytes() -> int:
    return LIMITS["LOCALRUN_PROMPT_CACHE_MAX_BYTES"].value()  # type: ignore[no-any-return]


def checkpoints() -> tuple[int, int, int]:
    """Checkpoints of a recurrent state: (tokens between two, most per slot, most bytes)."""
    return (
        LIMITS["LOCALRUN_CHECKPOINT_EVERY"].value(),
        LIMITS["LOCALRUN_CHECKPOINTS"].value(),
        LIMITS["LOCALRUN_CHECKPOINT_MAX_BYTES"].value(),
    )


def pull_max_memory() -> int:
    return LIMITS["LOCALRUN_PULL_MAX_MEMORY"].value()  # type: ignore[no-any-return]
