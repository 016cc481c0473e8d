#!/usr/bin/env bash
# The initramfs is byte-for-byte reproducible: two builds from copies of the inputs with
# different mtimes, in different directories, are identical to the shipped one.
set -euo pipefail
mkinitramfs=$1 agent=$2 busybox=$3 built=$4
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/a" "$work/b"
cp "$agent" "$work/a/agent"; cp "$busybox" "$work/a/busybox"
cp "$agent" "$work/b/agent"; cp "$busybox" "$work/b/busybox"
touch -d '2001-01-01' "$work/a/agent" "$work/a/busybox"
chmod 700 "$work/b/agent"
python3 "$mkinitramfs" "$work/a/agent" "$work/a/busybox" "$work/a.cpio"
python3 "$mkinitramfs" "$work/b/agent" "$work/b/busybox" "$work/b.cpio"
cmp "$work/a.cpio" "$work/b.cpio"
cmp "$work/a.cpio" "$built"
# The archive lists what the guest needs.
listing=$(python3 - "$work/a.cpio" <<'PY'
import sys
data = open(sys.argv[1], 'rb').read(); pos = 0
while True:
    h = data[pos:pos + 110]; namesize = int(h[94:102], 16); size = int(h[54:62], 16)
    name = data[pos + 110:pos + 110 + namesize - 1].decode(); pos += 110 + namesize
    pos += -pos % 4; pos += size; pos += -pos % 4
    if name == 'TRAILER!!!': break
    print(name)
PY
)
for entry in init bin/busybox bin/sh dev/console dev/null proc sys tmp; do
  grep -qx "$entry" <<<"$listing" || { echo "missing $entry"; exit 1; }
done
echo "initramfs reproducible: $(sha256sum < "$built" | cut -c1-16)"
