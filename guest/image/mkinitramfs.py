#!/usr/bin/env python3
"""Writes the Vessel guest initramfs: an uncompressed newc cpio archive.

Byte-for-byte reproducible: entries sorted, every mtime 0, owner root, and the device
node the kernel needs before /dev is mounted written directly, so no root privilege or
mknod is needed to build it.

usage: mkinitramfs.py AGENT BUSYBOX OUTPUT
"""
import os
import stat
import subprocess
import sys

DIRS = ["bin", "dev", "etc", "home", "proc", "root", "run", "sbin", "sys", "tmp",
        "usr", "usr/bin", "usr/sbin", "var", "var/tmp"]


def header(ino, mode, nlink, size, name, rdev_major=0, rdev_minor=0):
    name_bytes = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev_major, rdev_minor,
              len(name_bytes), 0]
    data = b"070701" + b"".join(b"%08X" % f for f in fields) + name_bytes
    return data + b"\0" * (-len(data) % 4)


def main():
    agent, busybox, output = sys.argv[1:4]
    entries = []  # (name, mode, content, (major, minor))
    for d in DIRS:
        mode = 0o1777 if d in ("tmp", "var/tmp") else 0o755
        entries.append((d, stat.S_IFDIR | mode, b"", None))
    entries.append(("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1)))
    entries.append(("dev/null", stat.S_IFCHR | 0o666, b"", (1, 3)))
    with open(agent, "rb") as f:
        entries.append(("init", stat.S_IFREG | 0o755, f.read(), None))
    with open(busybox, "rb") as f:
        entries.append(("bin/busybox", stat.S_IFREG | 0o755, f.read(), None))
    entries.append(("etc/passwd", stat.S_IFREG | 0o644, b"root:x:0:0:root:/root:/bin/sh\n", None))
    entries.append(("etc/group", stat.S_IFREG | 0o644, b"root:x:0:\n", None))
    entries.append(("etc/hosts", stat.S_IFREG | 0o644, b"127.0.0.1 localhost\n", None))

    applets = subprocess.run([busybox, "--list-full"], check=True, capture_output=True,
                             text=True).stdout.split()
    taken = {e[0] for e in entries}
    for path in applets:
        if path in taken or path == "bin/busybox":
            continue
        depth = path.count("/")
        target = ("../" * depth) + "bin/busybox"
        entries.append((path, stat.S_IFLNK | 0o777, target.encode(), None))
        taken.add(path)

    entries.sort(key=lambda e: e[0])
    out = bytearray()
    for ino, (name, mode, content, dev) in enumerate(entries, start=1):
        nlink = 2 if stat.S_ISDIR(mode) else 1
        major, minor = dev or (0, 0)
        out += header(ino, mode, nlink, len(content), name, major, minor)
        out += content + b"\0" * (-len(content) % 4)
    out += header(0, 0, 1, 0, "TRAILER!!!")
    out += b"\0" * (-len(out) % 512)
    tmp = output + ".tmp"
    with open(tmp, "wb") as f:
        f.write(out)
    os.replace(tmp, output)


if __name__ == "__main__":
    main()
