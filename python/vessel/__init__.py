"""Vessel's Python client: microVM sandboxes for untrusted code, through ``vessel serve``.

    from vessel import Sandbox

    with Sandbox.create("python", timeout=120) as sbx:
        result = sbx.commands.run("python3 -c 'print(6 * 7)'")
        print(result.stdout)  # 42
"""

from .errors import (
    AuthenticationError,
    CommandExitException,
    ConflictError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    SandboxNotFoundError,
    SandboxPausedError,
    TimeoutException,
    VesselError,
)
from .sandbox import (
    CommandHandle,
    CommandResult,
    Commands,
    EntryInfo,
    Files,
    ProcessInfo,
    Sandbox,
    SandboxInfo,
    SnapshotInfo,
)

__all__ = [
    "AuthenticationError",
    "CommandExitException",
    "CommandHandle",
    "CommandResult",
    "Commands",
    "ConflictError",
    "EntryInfo",
    "Files",
    "InvalidArgumentError",
    "NotFoundError",
    "ProcessInfo",
    "ResourceExhaustedError",
    "Sandbox",
    "SandboxInfo",
    "SandboxNotFoundError",
    "SandboxPausedError",
    "SnapshotInfo",
    "TimeoutException",
    "VesselError",
]
