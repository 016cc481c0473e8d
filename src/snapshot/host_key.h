// The key that makes a snapshot this host's. Every manifest Vessel writes carries an
// HMAC-SHA-256 under it, and a restore refuses one that does not: a snapshot crafted or
// altered elsewhere cannot choose what this host runs. docs/snapshot-format.md says how
// snapshots move between hosts (`vessel snapshot import`, or one key shared by a fleet).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "vessel/error.h"

namespace vessel::snapshot {

inline constexpr size_t kHostKeySize = 32;
inline constexpr const char* kHostKeyFile = "snapshot.key";

struct HostKey {
  std::array<uint8_t, kHostKeySize> bytes{};
};

// The key in `dir`/snapshot.key: 64 lowercase hex digits and a newline. Created when
// missing, from getrandom, mode 0600, in `dir` made 0700; two processes creating it at
// once end up with the same key. kHostIo when `dir` or the file belongs to another user,
// is open to group or others, is a symlink, or the file does not hold a key.
[[nodiscard]] Result<HostKey> LoadOrCreateHostKey(const std::string& dir);

// LoadOrCreateHostKey(ConfigDir()), read once per process.
[[nodiscard]] Result<HostKey> ThisHostKey();

// HMAC-SHA-256 of `text` under `key`, as 64 lowercase hex digits.
[[nodiscard]] Result<std::string> HmacSha256Hex(const HostKey& key, std::string_view text);

}  // namespace vessel::snapshot
