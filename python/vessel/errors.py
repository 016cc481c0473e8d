"""The exceptions the client raises: one per kind of answer the server gives."""

from __future__ import annotations


class VesselError(Exception):
    """Anything the server refused or could not do; the message is the server's."""


class AuthenticationError(VesselError):
    """A wrong or missing API key, or a sandbox access token that does not match."""


class InvalidArgumentError(VesselError):
    """The request was malformed or asked for something out of range."""


class NotFoundError(VesselError):
    """What the request names (a file, a process, a template) does not exist."""


class SandboxNotFoundError(NotFoundError):
    """No sandbox of that id: never made, killed, or expired."""


class ConflictError(VesselError):
    """The sandbox is not in a state that allows the request (paused already, say)."""


class SandboxPausedError(ConflictError):
    """The sandbox is paused: ``Sandbox.connect(id)`` resumes it."""


class ResourceExhaustedError(VesselError):
    """A limit of the server was reached; the message names it."""


class TimeoutException(VesselError):
    """A command or a request took longer than its timeout; the command was killed."""


class CommandExitException(VesselError):
    """A command ended with a non-zero exit code (or a signal) and ``check`` was set."""

    def __init__(self, exit_code: int, stdout: str, stderr: str, error: str | None) -> None:
        detail = error or f"exit code {exit_code}"
        super().__init__(f"the command failed: {detail}; stderr: {stderr[-400:]!r}")
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr
        self.error = error


_CONNECT_CODES: dict[str, type[VesselError]] = {
    "unauthenticated": AuthenticationError,
    "invalid_argument": InvalidArgumentError,
    "not_found": NotFoundError,
    "already_exists": ConflictError,
    "failed_precondition": ConflictError,
    "resource_exhausted": ResourceExhaustedError,
    "deadline_exceeded": TimeoutException,
}


def from_connect(code: str, message: str) -> VesselError:
    """The exception for a data-plane (Connect) error code."""
    if code == "failed_precondition" and "paused" in message:
        return SandboxPausedError(message)
    return _CONNECT_CODES.get(code, VesselError)(f"{code}: {message}")


def from_status(status: int, message: str, *, sandbox_request: bool = False) -> VesselError:
    """The exception for a control-plane (REST) HTTP status."""
    if status == 401 or status == 403:
        return AuthenticationError(message)
    if status == 404:
        return SandboxNotFoundError(message) if sandbox_request else NotFoundError(message)
    if status == 400:
        return InvalidArgumentError(message)
    if status == 409:
        return ConflictError(message)
    if status == 429:
        return ResourceExhaustedError(message)
    return VesselError(f"HTTP {status}: {message}")
