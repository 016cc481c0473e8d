// Steps shared by image builds and imports: measuring an unpacked tree, checking its
// architecture and packing it into an erofs file.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "vessel/error.h"

namespace vessel::image {

// Bytes of the regular files under `tree` (links not followed).
[[nodiscard]] Result<uint64_t> TreeSize(const std::string& tree);

// kInvalidConfig when the tree's shell (/bin/sh, /usr/bin/sh, or busybox, its links
// resolved with the tree as the root) is an ELF program for another machine than x86-64,
// or when it has no shell at all.
[[nodiscard]] Result<void> CheckArchitecture(const std::string& tree);

// mkfs.erofs with LZ4HC compression and every timestamp and the UUID fixed (from `seed`),
// so that the same tree always packs to the same bytes. `all_root` makes every file owned
// by root. Output goes to `log`.
[[nodiscard]] Result<void> PackTree(const std::string& tree, const std::string& erofs,
                                    const std::string& seed, const std::string& log,
                                    std::chrono::milliseconds timeout, bool all_root = false);

}  // namespace vessel::image
