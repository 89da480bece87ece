"""A forward HTTP proxy on a loopback port that records what passes through it.

Clients configured with HTTP_PROXY send absolute-form requests (`GET http://host:port/path`);
the proxy forwards each one as is (redirects are passed back, not followed) and streams the
answer, so a test can check that a client honours the proxy settings. `names` maps a host name
to a loopback "host:port", as a DNS would: a client then reaches a test server by a name that,
for the client's own lookups, is on no private network.
"""

from __future__ import annotations

import http.client
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "upgrade"}


class ForwardProxy:
    def __init__(self, names: dict[str, str] | None = None) -> None:
        self.requests: list[str] = []  # "METHOD absolute-url"
        self.names = names or {}
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: object) -> None:
                pass

            def _forward(self) -> None:
                owner.requests.append(f"{self.command} {self.path}")
                url = urlsplit(self.path)
                if url.scheme != "http" or not url.hostname:
                    self.send_error(400, "absolute http:// URL expected")
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                host, port = url.hostname, url.port or 80
                if host in owner.names:
                    host, _, number = owner.names[host].rpartition(":")
                    port = int(number)
                conn = http.client.HTTPConnection(host, port, timeout=30)
                try:
                    path = url.path + (f"?{url.query}" if url.query else "")
                    conn.request(self.command, path or "/", body=body, headers=headers)
                    answer = conn.getresponse()
                    self.send_response(answer.status, answer.reason)
                    for key, value in answer.getheaders():
                        if key.lower() not in _HOP | {"transfer-encoding"}:
                            self.send_header(key, value)
                    self.end_headers()
                    if self.command != "HEAD":
                        shutil.copyfileobj(answer, self.wfile, 1 << 20)
                except OSError:
                    self.close_connection = True
                finally:
                    conn.close()

            do_GET = do_HEAD = do_POST = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> ForwardProxy:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
