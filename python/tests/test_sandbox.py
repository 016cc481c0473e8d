"""The Python client against a real `vessel serve` and real VMs."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time

import pytest

from vessel import (
    AuthenticationError,
    CommandExitException,
    InvalidArgumentError,
    NotFoundError,
    Sandbox,
    SandboxNotFoundError,
    SandboxPausedError,
    TimeoutException,
)


@pytest.fixture(scope="module")
def sbx(server) -> Sandbox:
    with Sandbox.create("minimal", timeout=600, envs={"FROM_CREATE": "c"},
                        api_url=server.url, api_key=server.key) as sandbox:
        yield sandbox


def test_a_command_streams_its_output_and_returns_its_result(sbx):
    streamed: list[str] = []
    result = sbx.commands.run('echo hello; echo oops >&2; echo "$A $FROM_CREATE"; pwd',
                              envs={"A": "1"}, cwd="/tmp", on_stdout=streamed.append)
    assert result.exit_code == 0
    assert result.stdout == "hello\n1 c\n/tmp\n"
    assert result.stderr == "oops\n"
    assert "".join(streamed) == result.stdout


def test_a_failing_command_raises_unless_check_is_off(sbx):
    with pytest.raises(CommandExitException) as raised:
        sbx.commands.run("echo partial; echo why >&2; exit 3")
    assert raised.value.exit_code == 3
    assert raised.value.stdout == "partial\n"
    assert raised.value.stderr == "why\n"
    assert sbx.commands.run("exit 5", check=False).exit_code == 5


def test_a_command_past_its_timeout_is_killed(sbx):
    started = time.monotonic()
    with pytest.raises(TimeoutException):
        sbx.commands.run("sleep 600", timeout=1)
    assert time.monotonic() - started < 30
    deadline = time.monotonic() + 30
    while any(p.args[-1] == "sleep 600" for p in sbx.commands.list()):
        assert time.monotonic() < deadline, "the command outlived its timeout"
        time.sleep(0.2)


def test_background_commands_take_stdin_are_listed_connected_and_killed(sbx):
    cat = sbx.commands.run("cat; echo done", background=True, stdin=True)
    cat.send_stdin("ping\n")
    cat.close_stdin()
    assert cat.wait(timeout=60).stdout == "ping\ndone\n"

    sleeper = sbx.commands.run("echo up; sleep 600", background=True)
    assert any(p.pid == sleeper.pid for p in sbx.commands.list())
    watcher = sbx.commands.connect(sleeper.pid)
    assert sleeper.kill() is True
    for handle in (sleeper, watcher):
        with pytest.raises(CommandExitException) as raised:
            handle.wait(timeout=60)
        assert raised.value.error  # a signal, not an exit
    assert sbx.commands.kill(sleeper.pid) is False
    with pytest.raises(NotFoundError):
        sbx.commands.connect(sleeper.pid)


def test_files_round_trip_as_text_and_bytes(sbx):
    sbx.files.write("/tmp/py/a.txt", "héllo")
    assert sbx.files.read("/tmp/py/a.txt") == "héllo"
    blob = bytes(range(256)) * 4096
    sbx.files.write("/tmp/py/blob.bin", blob)
    assert sbx.files.read("/tmp/py/blob.bin", format="bytes") == blob
    names = {e.name: e for e in sbx.files.list("/tmp/py")}
    assert names["blob.bin"].size == len(blob) and names["blob.bin"].type == "file"
    assert sbx.files.exists("/tmp/py/a.txt")
    assert not sbx.files.exists("/tmp/py/missing")
    assert sbx.files.make_dir("/tmp/py/d/e") is True
    assert sbx.files.make_dir("/tmp/py/d/e") is False
    assert sbx.files.get_info("/tmp/py/d").type == "dir"
    moved = sbx.files.rename("/tmp/py/a.txt", "/tmp/py/d/b.txt")
    assert moved.path == "/tmp/py/d/b.txt"
    sbx.files.remove("/tmp/py")
    assert not sbx.files.exists("/tmp/py")
    with pytest.raises(NotFoundError):
        sbx.files.read("/tmp/py/d/b.txt")
    with pytest.raises(InvalidArgumentError):
        sbx.files.list("/tmp", depth=0)


def test_fork_snapshot_list_and_connect(server, connection, sbx):
    sbx.files.write("/tmp/state.txt", "parent")
    children = sbx.fork(2, timeout=120)
    try:
        assert len({c.sandbox_id for c in children} | {sbx.sandbox_id}) == 3
        children[0].files.write("/tmp/state.txt", "child")
        assert children[1].files.read("/tmp/state.txt") == "parent"
        assert sbx.files.read("/tmp/state.txt") == "parent"
        listed = {s.sandbox_id for s in Sandbox.list(**connection)}
        assert {c.sandbox_id for c in children} <= listed

        snapshot = sbx.snapshot(name="py-snap")
        assert snapshot.names == ["py-snap"]
        with Sandbox.create("py-snap", timeout=120, **connection) as restored:
            assert restored.files.read("/tmp/state.txt") == "parent"
            assert restored.get_info().template_id == snapshot.snapshot_id

        again = Sandbox.connect(children[0].sandbox_id, **connection)
        assert again.files.read("/tmp/state.txt") == "child"
    finally:
        for child in children:
            assert child.kill() is True
    assert children[0].kill() is False
    with pytest.raises(SandboxNotFoundError):
        Sandbox.connect(children[0].sandbox_id, **connection)


def test_pause_and_resume(connection):
    sandbox = Sandbox.create("minimal", timeout=120, **connection)
    try:
        sandbox.files.write("/tmp/kept.txt", "kept")
        assert sandbox.pause() is True
        assert sandbox.pause() is False
        assert sandbox.get_info().state == "paused"
        with pytest.raises(SandboxPausedError):
            sandbox.commands.run("true")
        resumed = Sandbox.connect(sandbox.sandbox_id, timeout=120, **connection)
        assert resumed.files.read("/tmp/kept.txt") == "kept"
        assert sandbox.is_running()
    finally:
        sandbox.kill()


def test_bad_keys_templates_and_arguments_are_clear_errors(server, connection):
    with pytest.raises(AuthenticationError):
        Sandbox.list(api_url=server.url, api_key="0" * 64)
    with pytest.raises(NotFoundError):
        Sandbox.create("no-such-template", **connection)
    with pytest.raises(InvalidArgumentError):
        Sandbox.create("minimal", timeout=-1, **connection)
    with pytest.raises(SandboxNotFoundError):
        Sandbox.connect("0123456789ab", **connection)


EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


def test_the_run_code_example_answers_for_good_bad_and_slow_code(server):
    def run(code: str, *args: str) -> dict:
        out = subprocess.run([sys.executable, EXAMPLES / "run_llm_code.py", code, *args],
                             env=server.env(), capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    assert run("print(sum(range(10)))") == {"exit_code": 0, "stdout": "45\n", "stderr": ""}
    crashed = run("raise SystemExit('no')")
    assert crashed["exit_code"] == 1 and "no" in crashed["stderr"]
    assert run("import time; time.sleep(60)", "--timeout", "2")["exit_code"] is None


def test_the_fork_example_runs_each_variant_in_its_own_copy(server):
    out = subprocess.run([sys.executable, EXAMPLES / "fork_variants.py", "--variants", "3"],
                         env=server.env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert [v["output"] for v in json.loads(out.stdout)] == ["500500", "1000", "271"]
