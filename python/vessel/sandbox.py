"""Sandboxes, their commands and their files, through ``vessel serve``."""

from __future__ import annotations

import base64
import datetime
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, overload

from ._transport import DataPlane, Transport
from .errors import (
    CommandExitException,
    ConflictError,
    NotFoundError,
    SandboxNotFoundError,
    TimeoutException,
    VesselError,
)

OutputHandler = Callable[[str], None]


@dataclass(frozen=True)
class SandboxInfo:
    """A sandbox as the server lists it."""

    sandbox_id: str
    template_id: str
    state: str  # "running", "paused" or "failed"
    metadata: dict[str, str]
    started_at: datetime.datetime | None
    end_at: datetime.datetime | None
    cpu_count: int
    memory_mb: int


@dataclass(frozen=True)
class SnapshotInfo:
    """A snapshot kept as a template: ``Sandbox.create(snapshot_id)`` starts from it."""

    snapshot_id: str
    names: list[str]


@dataclass(frozen=True)
class EntryInfo:
    """A file or directory in the sandbox."""

    name: str
    path: str
    type: Literal["file", "dir", "symlink", "other"]
    size: int
    mode: int
    permissions: str
    modified_time: str


@dataclass
class CommandResult:
    """How a command ended, and what it wrote."""

    exit_code: int
    stdout: str
    stderr: str
    error: str | None = None  # set when it did not exit by itself (a signal, its timeout)


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    cmd: str
    args: list[str]
    envs: dict[str, str]
    cwd: str


def _time(text: Any) -> datetime.datetime | None:
    if not isinstance(text, str) or not text:
        return None
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _sandbox_info(data: dict[str, Any]) -> SandboxInfo:
    return SandboxInfo(
        sandbox_id=data["sandboxID"],
        template_id=data.get("templateID", ""),
        state=data.get("state", "running"),
        metadata=dict(data.get("metadata") or {}),
        started_at=_time(data.get("startedAt")),
        end_at=_time(data.get("endAt")),
        cpu_count=int(data.get("cpuCount", 0)),
        memory_mb=int(data.get("memoryMB", 0)),
    )


_FILE_TYPES: dict[int, Literal["file", "dir", "symlink", "other"]] = {
    1: "file",
    2: "dir",
    3: "symlink",
}


def _entry(data: dict[str, Any]) -> EntryInfo:
    return EntryInfo(
        name=data.get("name", ""),
        path=data.get("path", ""),
        type=_FILE_TYPES.get(int(data.get("type", 0)), "other"),
        size=int(data.get("size", 0)),
        mode=int(data.get("mode", 0)),
        permissions=data.get("permissions", ""),
        modified_time=data.get("modifiedTime", ""),
    )


class CommandHandle:
    """A command that runs in the background: its output is gathered as it comes."""

    def __init__(
        self,
        commands: Commands,
        events: Iterator[dict[str, Any]],
        pid: int,
        on_stdout: OutputHandler | None,
        on_stderr: OutputHandler | None,
        check: bool,
    ) -> None:
        self._commands = commands
        self._events = events
        self.pid = pid
        self._on_stdout = on_stdout
        self._on_stderr = on_stderr
        self._check = check
        self._stdout: list[str] = []
        self._stderr: list[str] = []
        self._result: CommandResult | None = None
        self._failure: BaseException | None = None
        self._done = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def stdout(self) -> str:
        """What the command wrote to stdout so far."""
        return "".join(self._stdout)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def _read(self) -> None:
        try:
            for event in self._events:
                if "data" in event:
                    data = event["data"]
                    for stream, sink, handler in (
                        ("stdout", self._stdout, self._on_stdout),
                        ("pty", self._stdout, self._on_stdout),
                        ("stderr", self._stderr, self._on_stderr),
                    ):
                        if stream in data:
                            text = base64.b64decode(data[stream]).decode(errors="replace")
                            sink.append(text)
                            if handler:
                                handler(text)
                elif "end" in event:
                    end = event["end"]
                    error = end.get("error") or (None if end.get("exited") else end.get("status"))
                    self._result = CommandResult(
                        int(end.get("exitCode", -1)), self.stdout, self.stderr, error
                    )
        except BaseException as e:  # handed to wait()
            self._failure = e
        finally:
            self._done.set()

    def wait(self, timeout: float | None = None) -> CommandResult:
        """Waits for the command's end. With ``check``, a non-zero exit (or a signal) raises
        CommandExitException; ``timeout`` seconds without an end kill it and raise
        TimeoutException."""
        if not self._done.wait(timeout):
            self.kill()
            raise TimeoutException(f"the command (pid {self.pid}) ran past {timeout} s: killed")
        if self._failure is not None:
            raise self._failure
        result = self._result
        if result is None:
            raise VesselError(f"the stream of pid {self.pid} ended without its result")
        if self._check and (result.exit_code != 0 or result.error):
            raise CommandExitException(result.exit_code, result.stdout, result.stderr, result.error)
        return result

    def kill(self) -> bool:
        """SIGKILL; False when it had ended already."""
        return self._commands.kill(self.pid)

    def send_stdin(self, data: str | bytes) -> None:
        self._commands.send_stdin(self.pid, data)

    def close_stdin(self) -> None:
        self._commands.close_stdin(self.pid)


class Commands:
    """The sandbox's commands: ``sbx.commands``."""

    def __init__(self, data: DataPlane) -> None:
        self._data = data

    @overload
    def run(
        self,
        cmd: str,
        *,
        background: Literal[False] = False,
        envs: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = 60,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        stdin: bool = False,
        check: bool = True,
    ) -> CommandResult: ...

    @overload
    def run(
        self,
        cmd: str,
        *,
        background: Literal[True],
        envs: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = 60,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        stdin: bool = False,
        check: bool = True,
    ) -> CommandHandle: ...

    def run(
        self,
        cmd: str,
        *,
        background: bool = False,
        envs: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = 60,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        stdin: bool = False,
        check: bool = True,
    ) -> CommandResult | CommandHandle:
        """Runs ``cmd`` with ``/bin/bash -l -c`` (sh where the guest has no bash).

        The command is killed ``timeout`` seconds after it starts (None: never), in the
        foreground or not, and TimeoutException raised. In the foreground it returns the
        result once the command ends; with ``check`` a non-zero exit raises
        CommandExitException. With ``background`` it returns a CommandHandle at once.
        ``stdin`` keeps its stdin open for send_stdin().
        """
        message: dict[str, Any] = {
            "process": {"cmd": "/bin/bash", "args": ["-l", "-c", cmd], "envs": envs or {}},
            "stdin": stdin,
        }
        if cwd:
            message["process"]["cwd"] = cwd
        # The server kills the command at its timeout; wait() gives it a little longer.
        events = self._data.stream("process.Process/Start", message, timeout)
        pid = _started(events)
        handle = CommandHandle(self, events, pid, on_stdout, on_stderr, check)
        return handle if background else handle.wait(None if timeout is None else timeout + 30)

    def connect(
        self,
        pid: int,
        *,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        check: bool = True,
    ) -> CommandHandle:
        """Attaches to a running command: its output from now on, and its end."""
        events = self._data.stream("process.Process/Connect", {"process": {"pid": pid}}, None)
        return CommandHandle(self, events, _started(events), on_stdout, on_stderr, check)

    def list(self) -> list[ProcessInfo]:
        answer = self._data.unary("process.Process/List", {})
        out = []
        for p in answer.get("processes", []):
            config = p.get("config", {})
            out.append(
                ProcessInfo(
                    pid=int(p["pid"]),
                    cmd=config.get("cmd", ""),
                    args=list(config.get("args", [])),
                    envs=dict(config.get("envs", {})),
                    cwd=config.get("cwd", ""),
                )
            )
        return out

    def kill(self, pid: int) -> bool:
        """SIGKILL to the command; False when there is no such command."""
        try:
            self._data.unary(
                "process.Process/SendSignal", {"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"}
            )
        except NotFoundError:
            return False
        return True

    def send_stdin(self, pid: int, data: str | bytes) -> None:
        raw = data.encode() if isinstance(data, str) else data
        self._data.unary(
            "process.Process/SendInput",
            {"process": {"pid": pid}, "input": {"stdin": base64.b64encode(raw).decode()}},
        )

    def close_stdin(self, pid: int) -> None:
        self._data.unary("process.Process/CloseStdin", {"process": {"pid": pid}})


def _started(events: Iterator[dict[str, Any]]) -> int:
    for event in events:
        if "start" in event:
            return int(event["start"]["pid"])
    raise VesselError("the command's stream ended before it started")


class Files:
    """The sandbox's files: ``sbx.files``. Relative paths are taken from ``/``."""

    def __init__(self, data: DataPlane) -> None:
        self._data = data

    @overload
    def read(self, path: str, format: Literal["text"] = "text") -> str: ...

    @overload
    def read(self, path: str, format: Literal["bytes"]) -> bytes: ...

    def read(self, path: str, format: Literal["text", "bytes"] = "text") -> str | bytes:
        data = self._data.get_file(path)
        return data.decode() if format == "text" else data

    def write(self, path: str, data: str | bytes) -> None:
        """Writes the whole file, making its parent directories."""
        self._data.post_file(path, data.encode() if isinstance(data, str) else data)

    def list(self, path: str, depth: int = 1) -> list[EntryInfo]:
        answer = self._data.unary("filesystem.Filesystem/ListDir", {"path": path, "depth": depth})
        return [_entry(e) for e in answer.get("entries", [])]

    def get_info(self, path: str) -> EntryInfo:
        return _entry(self._data.unary("filesystem.Filesystem/Stat", {"path": path})["entry"])

    def exists(self, path: str) -> bool:
        try:
            self.get_info(path)
        except NotFoundError:
            return False
        return True

    def make_dir(self, path: str) -> bool:
        """Makes the directory and its parents; False when it exists already."""
        try:
            self._data.unary("filesystem.Filesystem/MakeDir", {"path": path})
        except ConflictError:
            return False
        return True

    def rename(self, old_path: str, new_path: str) -> EntryInfo:
        answer = self._data.unary(
            "filesystem.Filesystem/Move", {"source": old_path, "destination": new_path}
        )
        return _entry(answer["entry"])

    def remove(self, path: str) -> None:
        """Removes the file, or the directory with everything in it."""
        self._data.unary("filesystem.Filesystem/Remove", {"path": path})


class Sandbox:
    """A microVM sandbox run by ``vessel serve``. Use as a context manager to kill it on
    exit, or call kill(). The server is found from ``api_url`` / ``api_key``, else
    $VESSEL_API_URL (or $E2B_API_URL; default http://127.0.0.1:3000) and $VESSEL_API_KEY
    (or $E2B_API_KEY; default: the key vessel serve made in ~/.config/vessel/api-key)."""

    def __init__(self, transport: Transport, data: dict[str, Any]) -> None:
        self._transport = transport
        self.sandbox_id: str = data["sandboxID"]
        self._access_token: str = data.get("envdAccessToken") or ""
        plane = DataPlane(transport, self.sandbox_id, self._access_token)
        self.commands = Commands(plane)
        self.files = Files(plane)

    def __repr__(self) -> str:
        return f"Sandbox({self.sandbox_id!r})"

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    @classmethod
    def create(
        cls,
        template: str = "base",
        *,
        timeout: int = 300,
        envs: dict[str, str] | None = None,
        metadata: dict[str, str] | None = None,
        auto_pause: bool = False,
        api_url: str | None = None,
        api_key: str | None = None,
        request_timeout: float = 120.0,
    ) -> Sandbox:
        """Boots a sandbox from ``template`` (an image, ``minimal``, ``base``, or a
        snapshot's id or name) that ends ``timeout`` seconds from now (or is paused then,
        with ``auto_pause``)."""
        transport = Transport(api_url, api_key, request_timeout)
        body: dict[str, Any] = {
            "templateID": template,
            "timeout": timeout,
            "envVars": envs or {},
            "metadata": metadata or {},
        }
        if auto_pause:
            body["autoPause"] = True
        return cls(transport, transport.rest("POST", "/sandboxes", body))

    @classmethod
    def connect(
        cls,
        sandbox_id: str,
        *,
        timeout: int | None = None,
        api_url: str | None = None,
        api_key: str | None = None,
        request_timeout: float = 120.0,
    ) -> Sandbox:
        """A handle on an existing sandbox; a paused one is resumed."""
        transport = Transport(api_url, api_key, request_timeout)
        body = {"timeout": timeout} if timeout is not None else {}
        data = transport.rest(
            "POST", f"/v2/sandboxes/{sandbox_id}/connect", body, sandbox_request=True
        )
        return cls(transport, data)

    @classmethod
    def list(
        cls,
        *,
        state: list[str] | None = None,
        metadata: dict[str, str] | None = None,
        api_url: str | None = None,
        api_key: str | None = None,
    ) -> list[SandboxInfo]:
        """Every sandbox (running and paused unless ``state`` says), all pages."""
        transport = Transport(api_url, api_key, 120.0)
        query: dict[str, str] = {}
        if state:
            query["state"] = ",".join(state)
        if metadata:
            query["metadata"] = urllib.parse.urlencode(metadata)
        out: list[SandboxInfo] = []
        while True:
            page = transport.rest("GET", "/v2/sandboxes", query=query)
            out.extend(_sandbox_info(s) for s in page)
            if len(page) < 100:
                return out
            query["nextToken"] = page[-1]["sandboxID"]

    def get_info(self) -> SandboxInfo:
        return _sandbox_info(
            self._transport.rest("GET", f"/sandboxes/{self.sandbox_id}", sandbox_request=True)
        )

    def is_running(self) -> bool:
        try:
            return self.get_info().state == "running"
        except SandboxNotFoundError:
            return False

    def set_timeout(self, timeout: int) -> None:
        """The sandbox now ends ``timeout`` seconds from now."""
        self._transport.rest(
            "POST",
            f"/sandboxes/{self.sandbox_id}/timeout",
            {"timeout": timeout},
            sandbox_request=True,
        )

    def kill(self) -> bool:
        """Stops and removes it; False when it was gone already."""
        try:
            self._transport.rest("DELETE", f"/sandboxes/{self.sandbox_id}", sandbox_request=True)
        except SandboxNotFoundError:
            return False
        return True

    def pause(self) -> bool:
        """Saves it to disk and frees its VM; False when it was paused already.
        ``Sandbox.connect(id)`` resumes it."""
        try:
            self._transport.rest("POST", f"/sandboxes/{self.sandbox_id}/pause", sandbox_request=True)
        except ConflictError as e:
            if "already paused" in str(e):
                return False
            raise
        return True

    def fork(self, count: int = 1, *, timeout: int = 300) -> list[Sandbox]:
        """``count`` copies of the sandbox as it is now, each independent of it."""
        answer = self._transport.rest(
            "POST",
            f"/sandboxes/{self.sandbox_id}/fork",
            {"count": count, "timeout": timeout},
            sandbox_request=True,
        )
        return [Sandbox(self._transport, entry["sandbox"]) for entry in answer]

    def snapshot(self, name: str | None = None) -> SnapshotInfo:
        """Saves it as a template (it runs on): ``Sandbox.create(info.snapshot_id)``."""
        body = {"name": name} if name else {}
        answer = self._transport.rest(
            "POST", f"/sandboxes/{self.sandbox_id}/snapshots", body, sandbox_request=True
        )
        return SnapshotInfo(answer["snapshotID"], list(answer.get("names", [])))

