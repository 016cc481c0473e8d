// Unix sockets for the host ends of virtio devices.
#pragma once

#include <string>

#include "base/unique_fd.h"
#include "vessel/error.h"

namespace vessel::vmm::virtio {

// A nonblocking, close-on-exec stream socket listening at `path`. A stale socket file there
// is removed first; any other kind of file is left alone and binding fails.
[[nodiscard]] Result<UniqueFd> ListenUnix(const std::string& path);

// A nonblocking stream socket connected to `path`; fails when nothing listens there.
[[nodiscard]] Result<UniqueFd> ConnectUnix(const std::string& path);

}  // namespace vessel::vmm::virtio
