#!/usr/bin/env python3
"""Checks that every #include "..." in the tree points down the layers of docs/architecture.md.

    check_includes.py [ROOT]      exits 1 and names each include that breaks a rule
    check_includes.py --self-test checks that the rules catch planted offences

The rules are data (LAYERS, ONLY_FROM); a file's layer is the longest prefix of its path
in LAYERS. A file may include its own layer's headers and those its layer lists. Standard
library only.
"""
import os
import re
import sys
import tempfile

# layer (path prefix) -> the layers (path prefixes of headers) it may include besides its own
LAYERS = {
    "include/vessel/": [],
    "src/base/": ["vessel/error.h"],
    "src/protocol/": ["base/", "vessel/error.h"],
    # vessel-vmm: core, then arch and devices, then the VM; it never sees the engine or the
    # library, only base and protocol.
    "src/vmm/core/": ["base/", "vessel/error.h"],
    "src/vmm/arch/": ["vmm/core/", "base/", "vessel/error.h"],
    "src/vmm/devices/": ["vmm/core/", "vmm/devices/", "base/", "protocol/", "vessel/error.h"],
    "src/vmm/": ["vmm/", "base/", "protocol/", "vessel/error.h"],
    # The guest agent links base and protocol only.
    "guest/agent/": ["base/", "protocol/", "vessel/error.h"],
    # The egress policy: decisions as data, on base alone.
    "src/egress/": ["base/", "vessel/error.h"],
    "src/snapshot/": ["base/", "vessel/"],
    # Guest images: a store of files and the tools that make them; no VMs.
    "src/image/": ["image/", "snapshot/snapshot.h", "base/", "vessel/"],
    "src/engine/": ["engine/", "base/", "protocol/", "snapshot/", "vessel/"],
    # Above the engines nobody names one: sandbox, pool, supervisor and the CLI see the
    # Engine interface and its one front door.
    "src/sandbox/": ["sandbox/", "engine/engine.h", "engine/select.h", "engine/runtime_dir.h",
                     "egress/", "base/", "protocol/", "snapshot/", "image/image.h", "vessel/"],
    "src/pool/": ["pool/", "sandbox/", "engine/engine.h", "engine/select.h",
                  "engine/runtime_dir.h", "base/", "vessel/"],
    "src/supervisor/": ["supervisor/", "sandbox/", "engine/engine.h", "engine/select.h",
                        "engine/runtime_dir.h", "base/", "protocol/", "snapshot/", "vessel/"],
    # The server: E2B's API over the supervisors' sandboxes; it names no engine either.
    "src/server/": ["server/", "supervisor/", "sandbox/", "base/", "protocol/", "image/image.h",
                    "vessel/"],
    # The CLI's doors into the server: `vessel serve` (server.h) and `vessel mcp` (mcp.h).
    "src/cli/": ["cli/", "server/server.h", "server/mcp.h", "supervisor/", "sandbox/", "engine/engine.h", "engine/select.h",
                 "engine/runtime_dir.h", "engine/host.h", "base/", "protocol/", "snapshot/",
                 "image/image.h", "vessel/"],
}

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def layer_of(path):
    best = None
    for prefix in LAYERS:
        if path.startswith(prefix) and (best is None or len(prefix) > len(best)):
            best = prefix
    return best


def strip_top(path):
    """A path as an #include names it: without the src/ or include/ it lives under."""
    for top in ("src/", "include/"):
        if path.startswith(top):
            return path[len(top):]
    return path


def offences(root):
    found = []
    for top in ("src", "include", "guest"):
        for dirpath, _, files in os.walk(os.path.join(root, top)):
            for name in sorted(files):
                if not name.endswith((".h", ".cc")):
                    continue
                path = os.path.relpath(os.path.join(dirpath, name), root)
                layer = layer_of(path)
                if layer is None:
                    continue
                own = strip_top(layer)
                with open(os.path.join(root, path), encoding="utf-8") as f:
                    text = f.read()
                for header in INCLUDE.findall(text):
                    if "/" not in header:
                        continue  # a header beside the file
                    # *_impl.h is private to its folder.
                    if header.endswith("_impl.h") and os.path.dirname(header) != os.path.dirname(
                            strip_top(path)):
                        found.append(f"{path}: includes {header}, private to its folder")
                        continue
                    allowed = [own] + LAYERS[layer]
                    if not any(header == a or (a.endswith("/") and header.startswith(a))
                               for a in allowed):
                        found.append(f"{path}: includes {header}, outside what {layer} may see")
    return found


def self_test():
    planted = {
        "src/sandbox/bad.cc": '#include "engine/qemu/qemu_engine.h"\n',
        "src/pool/bad.cc": '#include "engine/kvm/kvm_engine.h"\n',
        "src/vmm/core/bad.cc": '#include "vmm/devices/serial/serial.h"\n',
        "src/vmm/bad.cc": '#include "engine/engine.h"\n',
        "guest/agent/bad.cc": '#include "sandbox/connection.h"\n',
        "src/cli/bad.cc": '#include "sandbox/sandbox_impl.h"\n',
        "src/protocol/bad.cc": '#include "engine/engine.h"\n',
        "src/sandbox/good.cc": '#include "engine/engine.h"\n#include "sandbox/sandbox_impl.h"\n',
        "src/vmm/devices/good.cc": '#include "vmm/core/device.h"\n#include "base/io.h"\n',
    }
    with tempfile.TemporaryDirectory() as root:
        for path, text in planted.items():
            os.makedirs(os.path.dirname(os.path.join(root, path)), exist_ok=True)
            with open(os.path.join(root, path), "w", encoding="utf-8") as f:
                f.write(text)
        found = offences(root)
    bad = sorted(p for p in planted if "bad" in p)
    caught = sorted({line.split(":")[0] for line in found})
    if caught != bad:
        print(f"self-test: expected offences in {bad}, got {found}")
        return 1
    print(f"self-test: all {len(bad)} planted offences caught, no false alarm")
    return 0


def main():
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..")
    found = offences(os.path.abspath(root))
    for line in found:
        print(line)
    if found:
        print(f"check_includes: {len(found)} include(s) break the layering (docs/architecture.md)")
        return 1
    print("check_includes: every include points down the layers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
