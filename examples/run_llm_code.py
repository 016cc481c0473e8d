#!/usr/bin/env python3
"""Runs code a model wrote in a fresh sandbox and prints what it did, as JSON: the shape
an agent's "run code" tool returns. The code comes from the first argument, or stdin.

    export VESSEL_API_URL=http://127.0.0.1:3000   # vessel serve's, the default
    python3 examples/run_llm_code.py 'print(sum(range(10)))'
"""

import argparse
import json
import sys

from vessel import CommandExitException, Sandbox, TimeoutException


def run_code(code: str, template: str, timeout: float) -> dict:
    """The code's output and exit code; a crash or a timeout is an answer, not an error."""
    with Sandbox.create(template, timeout=int(timeout) + 60) as sandbox:
        sandbox.files.write("/tmp/main.py", code)
        try:
            result = sandbox.commands.run("python3 /tmp/main.py", timeout=timeout)
            return {"exit_code": 0, "stdout": result.stdout, "stderr": result.stderr}
        except CommandExitException as e:
            return {"exit_code": e.exit_code, "stdout": e.stdout, "stderr": e.stderr}
        except TimeoutException:
            return {"exit_code": None, "error": f"no result within {timeout} s"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("code", nargs="?", help="Python source; default: stdin")
    parser.add_argument("--template", default="python", help="a template with python3")
    parser.add_argument("--timeout", type=float, default=30)
    args = parser.parse_args()
    code = args.code if args.code is not None else sys.stdin.read()
    print(json.dumps(run_code(code, args.template, args.timeout)))


if __name__ == "__main__":
    main()
