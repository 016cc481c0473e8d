// A client of a running sandbox's supervisor: the agent protocol over its control socket,
// so that the host library's process and file functions (sandbox/process.h, files.h) run
// on it unchanged. What `vessel exec` and `cp` and the server's data plane use.
#pragma once

#include <memory>

#include "sandbox/connection.h"
#include "supervisor/state.h"
#include "vessel/error.h"

namespace vessel::supervisor {

// Connects to the sandbox's control socket and waits for its greeting. kBackend when it
// failed or its supervisor is gone.
[[nodiscard]] Result<std::shared_ptr<sandbox::Connection>> ConnectAgent(
    const SandboxRecord& record);

}  // namespace vessel::supervisor
