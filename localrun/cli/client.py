"""A client of the localrun server's native /api routes, used by the CLI.

Only the standard library (http.client): `localrun ps` and the probe that `localrun run` makes
before it decides between the server and an in-process model must start in milliseconds.

    client = Client()                 # LOCALRUN_HOST, LOCALRUN_API_KEY
    client.is_up()                    # a quick GET /api/version
    with client.chat("smollm2:135m", messages) as stream:
        for obj in stream: ...        # NDJSON objects; closing the stream ends the generation

Errors come back typed: the server sends `{"error": "message", "code": ..., "hint": ...}` (the
Ollama dialect, whose clients read `error` as a string) and `code` is turned back into the
LocalrunError subclass. Nothing listening at the address raises ServerUnreachableError.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from localrun.errors import (
    BadRequestError,
    BusyError,
    ForbiddenError,
    LocalrunError,
    RequestTooLargeError,
    ServerError,
    ServerTLSError,
    ServerUnreachableError,
    UnauthorizedError,
)
from localrun.settings import config

CONNECT_TIMEOUT_S = 5.0
PROBE_TIMEOUT_S = 1.0
# Short requests (ps, show, version); a generation may wait for a model load or a free slot, so
# streamed requests read without a limit once connected.
REQUEST_TIMEOUT_S = 30.0

# When an error body carries no code (a proxy, an older server): the class its status means.
_BY_STATUS: dict[int, type[LocalrunError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    403: ForbiddenError,
    413: RequestTooLargeError,
    503: BusyError,
}

# The address a server listens on is not always one to connect to.
_CONNECT_TO = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def error_from_wire(status: int, body: bytes, retry_after: str | None = None) -> LocalrunError:
    """The typed error of an HTTP error response (Ollama or OpenAI dialect, or neither)."""
    data: Any = None
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        data = json.loads(body)
    err = error_from_object(data) if isinstance(data, dict) else None
    if err is None:
        cls = _BY_STATUS.get(status, ServerError)
        text = body.decode("utf-8", "replace").strip()[:200]
        err = cls(f"the server answered HTTP {status}" + (f": {text}" if text else ""))
    if status in _BY_STATUS and type(err) is LocalrunError:
        # No code, or one this client does not know: keep the message, type it by status.
        err = _retype(err, _BY_STATUS[status])
    if isinstance(err, BusyError):
        err.retry_after = _seconds(retry_after)
    elif isinstance(err, UnauthorizedError) and err.hint is None:
        err.hint = "set LOCALRUN_API_KEY to the server's key"
    return err


def error_from_object(data: dict[str, Any]) -> LocalrunError | None:
    """The error an object carries, or None when it carries none."""
    raw = data.get("error")
    if isinstance(raw, str):
        payload = {"message": raw, "code": data.get("code"), "hint": data.get("hint")}
    elif isinstance(raw, dict):  # the OpenAI dialect, or a nested localrun error
        payload = {"message": raw.get("message"), "code": raw.get("code"), "hint": raw.get("hint")}
    else:
        return None
    clean: dict[str, Any] = {k: v for k, v in payload.items() if isinstance(v, str)}
    cls = LocalrunError.by_code.get(str(clean.get("code")), LocalrunError)
    for key in cls.facts:  # the numbers that travel beside the message (ContextOverflowError's)
        if isinstance(data.get(key), int) and not isinstance(data.get(key), bool):
            clean[key] = data[key]
    return LocalrunError.from_dict(clean)


def _retype(err: LocalrunError, cls: type[LocalrunError]) -> LocalrunError:
    return LocalrunError.from_dict({"code": cls.code, "message": err.message, **_hint(err)})


def _hint(err: LocalrunError) -> dict[str, str]:
    return {"hint": err.hint} if err.hint else {}


def _seconds(text: str | None) -> int:
    try:
        return max(1, int(text or "1"))
    except ValueError:
        return 1


class Stream:
    """Yield the NDJSON objects of one streamed response.

    close() ends the request early: the server sees the connection go and stops the generation.
    """

    def __init__(
        self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse, where: str
    ) -> None:
        self._conn = conn
        self._resp = resp
        self._where = where
        self.closed = False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            while True:
                try:
                    line = self._resp.readline()
                except (OSError, http.client.HTTPException) as exc:
                    if self.closed:
                        return
                    raise ServerError(
                        f"the connection to the server at {self._where} broke ({exc})",
                        hint="see the server's log",
                    ) from None
                if not line:
                    return
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError:
                    raise ServerError(
                        f"the server at {self._where} sent a line that is not JSON: {line[:80]!r}"
                    ) from None
                if not isinstance(obj, dict):
                    raise ServerError(f"the server at {self._where} sent {type(obj).__name__}")
                err = error_from_object(obj)
                if err is not None:
                    raise err
                yield obj
        finally:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        sock = self._conn.sock
        if sock is not None:
            # shutdown() sends the FIN now, even while the response still holds the socket's
            # file object: the server must notice at once and free the slot.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._resp.close()
        self._conn.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Client:
    """Talk to the server at LOCALRUN_HOST (or `host`), with LOCALRUN_API_KEY as a Bearer token.

    It uses TLS when LOCALRUN_HOST says https:// (or `https` is true). It then trusts the
    system's certificates, or LOCALRUN_CA_FILE's.
    """

    def __init__(
        self,
        host: tuple[str, int] | None = None,
        *,
        api_key: str | None = None,
        https: bool | None = None,
    ) -> None:
        self.host, self.port = config.host() if host is None else host
        self.api_key = config.api_key() if api_key is None else api_key
        self.https = config.host_is_https() if https is None else https

    @property
    def address(self) -> str:
        """host:port as a user would type it in LOCALRUN_HOST."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The server's root URL as another program on this machine reaches it."""
        host = _CONNECT_TO.get(self.host, self.host)
        where = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        return f"{'https' if self.https else 'http'}://{where}"

    def _unreachable(self, exc: BaseException) -> ServerUnreachableError:
        import ssl

        if isinstance(exc, ssl.SSLCertVerificationError):
            return ServerTLSError(
                f"the server at {self.address} presented a certificate this machine does not "
                f"trust ({exc.verify_message or exc.reason})",
                hint="set LOCALRUN_CA_FILE to the certificate of the authority that signed it",
            )
        if isinstance(exc, ssl.SSLError):
            return ServerTLSError(
                f"no TLS at {self.address} ({exc.reason or exc})",
                hint=f"if it serves plain HTTP, set LOCALRUN_HOST=http://{self.address}",
            )
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        hint = "start one with `localrun serve`, or set LOCALRUN_HOST to its address"
        if isinstance(exc, http.client.RemoteDisconnected) and not self.https:
            hint = f"if it serves HTTPS, set LOCALRUN_HOST=https://{self.address}"
        return ServerUnreachableError(
            f"no localrun server answers at {self.address} ({reason or type(exc).__name__})",
            hint=hint,
        )

    # -- transport -----------------------------------------------------------------------------

    def _open(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        timeout: float | None,
        connect_timeout: float = CONNECT_TIMEOUT_S,
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send a request and read the response head; an error status raises its typed error."""
        host = _CONNECT_TO.get(self.host, self.host)
        conn: http.client.HTTPConnection
        if self.https:
            from localrun.settings import tls

            conn = http.client.HTTPSConnection(
                host, self.port, timeout=connect_timeout, context=tls.client_context()
            )
        else:
            conn = http.client.HTTPConnection(host, self.port, timeout=connect_timeout)
        headers = {"Accept": "application/json", "User-Agent": "localrun-cli"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            conn.connect()
        except OSError as exc:  # refused, timed out, no route, unknown host
            conn.close()
            raise self._unreachable(exc) from None
        assert conn.sock is not None
        conn.sock.settimeout(timeout)
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise self._unreachable(exc) from None
        except BaseException:  # Ctrl-C while waiting: drop the request
            conn.close()
            raise
        if resp.status >= 400:
            try:
                payload = resp.read(64 * 1024)
            except (OSError, http.client.HTTPException):
                payload = b""
            finally:
                conn.close()
            raise error_from_wire(resp.status, payload, resp.getheader("Retry-After"))
        return conn, resp

    def request(
        self, method: str, path: str, body: Any = None, *, timeout: float | None = REQUEST_TIMEOUT_S
    ) -> Any:
        """One request with a JSON answer."""
        conn, resp = self._open(method, path, body, timeout=timeout)
        try:
            payload = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ServerError(
                f"the connection to the server at {self.address} broke ({exc})"
            ) from None
        finally:
            conn.close()
        if not payload:
            return None
        try:
            return json.loads(payload)
        except ValueError:
            raise ServerError(f"the server at {self.address} did not answer with JSON") from None

    def stream(self, method: str, path: str, body: Any = None) -> Stream:
        """A request whose answer is NDJSON, read as it comes."""
        conn, resp = self._open(method, path, body, timeout=None)
        return Stream(conn, resp, self.address)

    # -- routes --------------------------------------------------------------------------------

    def is_up(self, timeout: float = PROBE_TIMEOUT_S) -> bool:
        """Whether a localrun (or Ollama-compatible) server answers: GET /api/version."""
        try:
            conn, resp = self._open("GET", "/api/version", timeout=timeout, connect_timeout=timeout)
        except UnauthorizedError:
            return True  # it is up; the request that follows reports the key problem
        except ServerTLSError:
            raise  # a server is there, but this machine cannot talk to it safely: say so
        except LocalrunError:
            return False
        try:
            data = json.loads(resp.read(4096))
        except (OSError, ValueError, http.client.HTTPException):
            return False
        finally:
            conn.close()
        return isinstance(data, dict) and "version" in data

    def version(self) -> str:
        """The server's own version: localrun's, or an Ollama server's."""
        data = self.request("GET", "/api/version")
        return str(data.get("localrun_version") or data["version"])

    def store(self) -> str | None:
        """Return the folder of the store the server answers from, or None; never raise.

        Only a localrun server listening on loopback says where its store is.
        """
        try:
            data = self.request("GET", "/api/version")
        except LocalrunError:
            return None
        store = data.get("localrun_store") if isinstance(data, dict) else None
        return store if isinstance(store, str) else None

    def ps(self) -> list[dict[str, Any]]:
        """The loaded models, as /api/ps lists them."""
        data = self.request("GET", "/api/ps")
        return list(data.get("models") or []) if isinstance(data, dict) else []

    def show(self, model: str) -> dict[str, Any]:
        data = self.request("POST", "/api/show", {"model": model})
        return data if isinstance(data, dict) else {}

    def chat(
        self,
        model: str,
        messages: list[dict[str, Any]],
        *,
        options: dict[str, Any] | None = None,
        format: str | dict[str, Any] | None = None,
        keep_alive: float | str | None = None,
        think: bool | str | None = None,
    ) -> Stream:
        """POST /api/chat, streamed: objects with `message.content`, the last with `done`.

        Objects may also carry `message.thinking`.
        """
        body: dict[str, Any] = {"model": model, "messages": messages, "stream": True}
        _put(body, options=options, format=format, keep_alive=keep_alive, think=think)
        return self.stream("POST", "/api/chat", body)

    def generate(
        self,
        model: str,
        prompt: str = "",
        *,
        system: str | None = None,
        options: dict[str, Any] | None = None,
        format: str | dict[str, Any] | None = None,
        keep_alive: float | str | None = None,
        raw: bool = False,
    ) -> Stream:
        """POST /api/generate, streamed: objects with `response`, the last with `done`."""
        body: dict[str, Any] = {"model": model, "prompt": prompt, "stream": True}
        if raw:
            body["raw"] = True
        _put(body, system=system, options=options, format=format, keep_alive=keep_alive)
        return self.stream("POST", "/api/generate", body)

    def load(
        self,
        model: str,
        *,
        options: dict[str, Any] | None = None,
        keep_alive: float | str | None = None,
    ) -> dict[str, Any]:
        """Load a model (an empty prompt); returns the final object (load_duration)."""
        body: dict[str, Any] = {"model": model, "prompt": "", "stream": False}
        _put(body, options=options, keep_alive=keep_alive)
        data = self.request("POST", "/api/generate", body, timeout=None)
        return data if isinstance(data, dict) else {}

    def unload(self, model: str) -> dict[str, Any]:
        """Unload a model now: an empty prompt with keep_alive 0."""
        body = {"model": model, "prompt": "", "keep_alive": 0, "stream": False}
        data = self.request("POST", "/api/generate", body)
        return data if isinstance(data, dict) else {}

    def pull(self, model: str) -> Stream:
        """POST /api/pull: progress objects (status, digest, total, completed)."""
        return self.stream("POST", "/api/pull", {"model": model, "stream": True})

    def create(self, model: str, **fields: Any) -> Stream:
        """POST /api/create with Ollama's fields (from, system, parameters, messages, ...)."""
        body = {"model": model, "stream": True}
        body.update((k, v) for k, v in fields.items() if v is not None)
        return self.stream("POST", "/api/create", body)


def _put(body: dict[str, Any], **fields: Any) -> None:
    for key, value in fields.items():
        if value is not None and value != {}:
            body[key] = value
