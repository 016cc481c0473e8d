// Directories only this user can use: the runtime root, the config directory.
#pragma once

#include <string>
#include <string_view>

#include "vessel/error.h"

namespace vessel {

// What a private directory is for, for the error that refuses one: "the runtime
// directory", holding "the sandboxes' sockets and state", chosen by VESSEL_RUNTIME_DIR.
struct PrivateDirRole {
  std::string_view name;
  std::string_view holds;
  std::string_view variable;
};

// Makes `path` a directory only this user can use, or says why it cannot be one: created
// with mode 0700 when missing (its parents as usual), then checked through a descriptor
// opened without following a symlink: a directory, owned by the effective uid, that group
// and others cannot use. Refused otherwise (kHostIo saying what to do), because whoever
// owns or shares it could read what is kept there or plant their own; except that with
// `narrow`, one of ours with a wider mode (made by an older Vessel) is narrowed to 0700.
// Only for directories Vessel names itself: a directory the user chose (say /tmp) is
// never chmod'ed.
[[nodiscard]] Result<void> MakePrivateDir(const std::string& path, bool narrow,
                                          const PrivateDirRole& role);

}  // namespace vessel
