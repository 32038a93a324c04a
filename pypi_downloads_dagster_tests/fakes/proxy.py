"""A minimal forward HTTP proxy whose upstream connections leave from a chosen loopback address.

Every address in 127.0.0.0/8 is local on Linux, so proxies bound to 127.0.0.2, 127.0.0.3, ... look
like distinct egress IPs to a fake server on 127.0.0.1: that is how the proxy pool is tested offline.
It handles absolute-form requests (`GET http://host:port/path`), which is what `requests` sends to an
`http://` proxy for `http://` URLs; `CONNECT` (https tunnels) is refused with 405.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import threading
import time
from typing import NamedTuple
from urllib.parse import quote, urlsplit

from pypi_downloads_dagster_tests.fakes.server import LocalServer, QuietHandler

# Headers that describe one connection, not the message: never passed through (RFC 9110 7.6.1).
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
              "te", "trailer", "transfer-encoding", "upgrade"}


class ProxyRequest(NamedTuple):
    time: float  # time.monotonic()
    method: str
    url: str
    status: int | None  # None: the proxy was down and closed the connection


class _ProxyHandler(QuietHandler):

    def parse_request(self):
        # Checked per request (after its first line is read), so kept-alive connections go down too.
        if self.server.app.down:
            method, url = (self.raw_requestline.decode("latin-1").split() + ["?", "?"])[:2]
            self.server.app._log(method, url, None)
            self.close_connection = True  # no answer: the server closes the socket
            return False
        return super().parse_request()

    def do_CONNECT(self):
        self._error(405, "CONNECT is not supported")

    def _forward(self):
        proxy: FakeProxy = self.server.app
        body = self.read_body()  # read first, so an early refusal leaves the connection clean
        if proxy.username is not None and self.headers.get("Proxy-Authorization") != proxy._expected_auth():
            self._error(407, "Proxy Authentication Required", {"Proxy-Authenticate": 'Basic realm="fake-proxy"'})
            return
        if proxy.override is not None:  # the proxy answers itself (a captive portal, its own error page)
            status, content_type, page = proxy.override
            proxy._log(self.command, self.path, status)
            self.send_body(status, page.encode() if isinstance(page, str) else page, content_type)
            return
        target = urlsplit(self.path)
        if target.scheme != "http" or not target.hostname:
            self._error(400, "absolute-form http:// URL required")
            return
        if not _is_loopback(target.hostname):
            self._error(403, "only 127.0.0.0/8 upstreams are allowed")
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        source = (proxy.source_ip, 0) if proxy.source_ip else None
        conn = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=proxy.timeout, source_address=source)
        try:
            conn.request(self.command, target.path + (f"?{target.query}" if target.query else ""), body or None, headers)
            response = conn.getresponse()
            cut = False
            try:
                content = response.read()
            except http.client.IncompleteRead as exc:
                # Relay what arrived and close early, as a streaming proxy would.
                content, cut = exc.partial, True
        except (OSError, http.client.HTTPException) as exc:
            self._error(502, f"upstream failed: {exc!r}")
            return
        finally:
            conn.close()
        proxy._log(self.command, self.path, response.status)  # before answering: a client may look at once
        self.send_response_only(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                self.send_header(key, value)
        declared = response.getheader("Content-Length")
        length = declared if (cut or self.command == "HEAD") and declared else str(len(content))
        self.send_header("Content-Length", length)
        if cut:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(content)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _forward

    def _error(self, status: int, message: str, headers: dict | None = None) -> None:
        self.server.app._log(self.command, self.path, status)
        self.send_body(status, f"{status} {message}\n".encode(), "text/plain", headers)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network("127.0.0.0/8")
    except ValueError:
        return False


class FakeProxy(LocalServer):
    """A forward proxy on 127.0.0.1 whose upstream connections come from `source_ip`.

    With `username` set, requests need `Proxy-Authorization: Basic ...` (else 407). Set `down = True`
    to have it close every connection at once. Set `override = (status, content_type, body)` to have
    it answer every (authorized) request itself without asking upstream, as a captive portal or a
    proxy's own error page does (e.g. a 200 HTML page). `requests` logs every request it saw.
    """

    def __init__(self, source_ip: str | None = "127.0.0.2", username: str | None = None, password: str | None = None,
                 timeout: float = 10.0):
        self.source_ip = source_ip
        self.username = username
        self.password = password
        self.timeout = timeout
        self.down = False
        self.override: tuple[int, str, str | bytes] | None = None
        self.lock = threading.Lock()
        self._requests: list[ProxyRequest] = []
        super().__init__(_ProxyHandler, app=self)

    @property
    def proxy_url(self) -> str:
        """The URL to give `requests` (credentials included when set)."""
        if self.username is None:
            return self.url
        credentials = f"{quote(self.username, safe='')}:{quote(self.password or '', safe='')}@"
        return self.url.replace("http://", f"http://{credentials}", 1)

    @property
    def proxies(self) -> dict[str, str]:
        return {"http": self.proxy_url, "https": self.proxy_url}

    @property
    def requests(self) -> list[ProxyRequest]:
        with self.lock:
            return list(self._requests)

    def _expected_auth(self) -> str:
        token = base64.b64encode(f"{self.username}:{self.password or ''}".encode()).decode()
        return f"Basic {token}"

    def _log(self, method: str, url: str, status: int | None) -> None:
        with self.lock:
            self._requests.append(ProxyRequest(time.monotonic(), method, url, status))
