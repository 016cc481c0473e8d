// Secrets Vessel keeps in its config directory (the snapshot key, the server's API key):
// random bytes written as lowercase hex in a file only this user can read.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "vessel/error.h"

namespace vessel {

// Where Vessel keeps its configuration: $VESSEL_CONFIG_DIR, else $XDG_CONFIG_HOME/vessel,
// else ~/.config/vessel.
std::string ConfigDir();

// Makes `dir`, a config directory, private to this user (MakePrivateDir) for what it
// `holds` (say, "the snapshot key"); the one the user chose with $VESSEL_CONFIG_DIR is
// checked but never chmod'ed.
[[nodiscard]] Result<void> MakePrivateConfigDir(const std::string& dir, std::string_view holds);

// What a secret file is, for the errors that refuse one: "the snapshot key", and what
// making a new one costs ("snapshots signed with it then need `vessel snapshot import`").
struct SecretRole {
  std::string_view name;
  std::string_view remedy;
};

// The `size` bytes in the file `path`: 2*size lowercase hex digits and a newline. Created
// when missing, from getrandom, mode 0600; two processes creating it at once end up with
// the same secret. kHostIo when the file belongs to another user, is open to group or
// others, is a symlink or does not hold such a secret.
[[nodiscard]] Result<std::vector<uint8_t>> LoadOrCreateSecret(const std::string& path, size_t size,
                                                              const SecretRole& role);

// `bytes` as lowercase hex digits, two per byte: how digests and secrets are written.
std::string LowerHex(std::span<const uint8_t> bytes);

}  // namespace vessel
