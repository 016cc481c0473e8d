"""A real `vessel serve` for the tests: a fresh config and state directory (so a fresh API
key), on a free loopback port. $VESSEL_CLI names the binary."""

from __future__ import annotations

import os
import re
import select
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest


@dataclass
class Server:
    url: str
    key: str
    config_dir: str

    def env(self) -> dict[str, str]:
        """What a program needs to find this server."""
        return dict(os.environ, VESSEL_API_URL=self.url, VESSEL_API_KEY=self.key)


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    binary = os.environ.get("VESSEL_CLI")
    if not binary:
        pytest.fail("VESSEL_CLI must name the vessel binary")
    with tempfile.TemporaryDirectory(prefix="vessel-python-") as config:
        env = dict(os.environ, VESSEL_CONFIG_DIR=config, VESSEL_STATE_DIR=config + "/state")
        child = subprocess.Popen(
            [binary, "serve", "--listen", "127.0.0.1:0"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert child.stderr is not None
        log = b""
        deadline = time.monotonic() + 20
        found = None
        while found is None and time.monotonic() < deadline:
            ready, _, _ = select.select([child.stderr], [], [], 0.5)
            if ready:
                chunk = os.read(child.stderr.fileno(), 4096)
                if not chunk:
                    break
                log += chunk
                found = re.search(rb"E2B API on (http://\S+)", log)
        if found is None:
            child.kill()
            pytest.fail(f"vessel serve did not start:\n{log.decode(errors='replace')}")
        # The rest of its log is read and dropped, so that it never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in iter(child.stderr.readline, b"")],
                         daemon=True).start()
        with open(os.path.join(config, "api-key")) as f:
            key = f.read().strip()
        try:
            yield Server(found.group(1).decode(), key, config)
        finally:
            child.terminate()
            child.wait(timeout=30)


@pytest.fixture
def connection(server: Server) -> dict[str, str]:
    """The keyword arguments that point the client at the test's server."""
    return {"api_url": server.url, "api_key": server.key}
