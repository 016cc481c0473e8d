"""HTTP to ``vessel serve``: its REST control plane, and a sandbox's data plane (the
Connect protocol with JSON, and /files). Standard library only."""

from __future__ import annotations

import http.client
import json
import os
import struct
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import VesselError, from_connect, from_status

DEFAULT_API_URL = "http://127.0.0.1:3000"
_END_STREAM = 0x02
# The most bytes of one event the client takes (the server sends at most 4 MiB).
_MAX_MESSAGE = 16 * 1024 * 1024


def _default_api_key() -> str:
    for variable in ("VESSEL_API_KEY", "E2B_API_KEY"):
        if os.environ.get(variable):
            return os.environ[variable]
    config = os.environ.get("VESSEL_CONFIG_DIR") or os.path.join(
        os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config"), "vessel"
    )
    path = Path(config) / "api-key"
    try:
        return path.read_text().strip()
    except OSError as e:
        raise VesselError(
            f"no API key: pass api_key=, set VESSEL_API_KEY, or start vessel serve once "
            f"to make {path} ({e.strerror})"
        ) from None


class Transport:
    """Where the server is and how to authenticate to it."""

    def __init__(self, api_url: str | None, api_key: str | None, request_timeout: float) -> None:
        url = api_url or os.environ.get("VESSEL_API_URL") or os.environ.get("E2B_API_URL")
        self.api_url = (url or DEFAULT_API_URL).rstrip("/")
        parsed = urllib.parse.urlsplit(self.api_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise VesselError(f"api_url {self.api_url!r} is not an http(s) URL")
        self._https = parsed.scheme == "https"
        self._host = parsed.hostname
        self._port = parsed.port
        self.api_key = api_key or _default_api_key()
        self.request_timeout = request_timeout

    def _connection(self, timeout: float | None) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        return cls(self._host, self._port, timeout=timeout)

    def request(
        self,
        method: str,
        target: str,
        body: bytes | None,
        headers: dict[str, str],
        timeout: float | None = None,
    ) -> http.client.HTTPResponse:
        connection = self._connection(timeout if timeout is not None else self.request_timeout)
        try:
            connection.request(method, target, body=body, headers=headers)
            return connection.getresponse()
        except OSError as e:
            connection.close()
            raise VesselError(f"cannot reach vessel serve at {self.api_url}: {e}") from None

    def rest(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: dict[str, str] | None = None,
        sandbox_request: bool = False,
    ) -> Any:
        """A control-plane call; its JSON answer (None for 204)."""
        target = path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = None if body is None else json.dumps(body).encode()
        headers = {"X-API-Key": self.api_key, "Content-Type": "application/json"}
        response = self.request(method, target, data, headers)
        text = response.read()
        if response.status >= 300:
            try:
                message = json.loads(text).get("message", "")
            except (ValueError, AttributeError):
                message = text.decode(errors="replace")
            raise from_status(response.status, message, sandbox_request=sandbox_request)
        return json.loads(text) if text else None


class DataPlane:
    """One sandbox's data plane."""

    def __init__(self, transport: Transport, sandbox_id: str, access_token: str) -> None:
        self._transport = transport
        self._headers = {"E2b-Sandbox-Id": sandbox_id}
        if access_token:
            self._headers["X-Access-Token"] = access_token

    def unary(self, method: str, message: dict[str, Any]) -> dict[str, Any]:
        """A unary Connect call, e.g. ``filesystem.Filesystem/Stat``."""
        headers = dict(self._headers, **{"Content-Type": "application/json"})
        response = self._transport.request(
            "POST", "/" + method, json.dumps(message).encode(), headers
        )
        text = response.read()
        try:
            answer = json.loads(text) if text else {}
        except ValueError:
            raise VesselError(f"HTTP {response.status}: {text[:200]!r}") from None
        if response.status != 200:
            raise from_connect(str(answer.get("code", "unknown")), str(answer.get("message", "")))
        return answer

    def stream(
        self, method: str, message: dict[str, Any], timeout: float | None
    ) -> Iterator[dict[str, Any]]:
        """A server-streaming Connect call: its events, until the end of the stream. With
        ``timeout`` (seconds) the server ends it then with deadline_exceeded; for Start it
        kills the command."""
        payload = json.dumps(message).encode()
        headers = dict(self._headers, **{"Content-Type": "application/connect+json"})
        if timeout:
            headers["Connect-Timeout-Ms"] = str(max(1, int(timeout * 1000)))
        # Keepalives come every 30 s: a read that waits longer than that finds a dead server.
        response = self._transport.request(
            "POST", "/" + method, struct.pack(">BI", 0, len(payload)) + payload, headers, 90
        )
        try:
            if response.status != 200:
                text = response.read()
                try:
                    answer = json.loads(text)
                except ValueError:
                    answer = {"code": "unknown", "message": f"HTTP {response.status}"}
                raise from_connect(str(answer.get("code")), str(answer.get("message", "")))
            while True:
                header = response.read(5)
                if len(header) < 5:
                    raise VesselError("the server closed the stream before its end")
                flags, size = struct.unpack(">BI", header)
                if size > _MAX_MESSAGE:
                    raise VesselError(f"a stream message of {size} bytes")
                body = json.loads(response.read(size) or b"{}")
                if flags & _END_STREAM:
                    error = body.get("error")
                    if error:
                        raise from_connect(str(error.get("code")), str(error.get("message", "")))
                    return
                yield body.get("event", {})
        finally:
            response.close()

    def get_file(self, path: str) -> bytes:
        target = "/files?" + urllib.parse.urlencode({"path": path})
        response = self._transport.request("GET", target, None, self._headers)
        data = response.read()
        if response.status != 200:
            raise _file_error(response.status, data)
        return data

    def post_file(self, path: str, data: bytes) -> None:
        target = "/files?" + urllib.parse.urlencode({"path": path})
        headers = dict(self._headers, **{"Content-Type": "application/octet-stream"})
        response = self._transport.request("POST", target, data, headers)
        text = response.read()
        if response.status != 200:
            raise _file_error(response.status, text)


def _file_error(status: int, text: bytes) -> VesselError:
    """/files answers with a Connect error (the sandbox's) or an HTTP one (the file's)."""
    try:
        answer = json.loads(text)
        code, message = answer.get("code"), str(answer.get("message", ""))
    except (ValueError, AttributeError):
        return from_status(status, text.decode(errors="replace"))
    if isinstance(code, str):
        return from_connect(code, message)
    return from_status(status, message)
