// A client for QEMU's machine protocol (QMP) over a connected stream socket.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "base/deadline.h"
#include "base/unique_fd.h"
#include "vessel/error.h"

namespace vessel::engine::qemu {

// Longest QMP message accepted from QEMU.
inline constexpr size_t kMaxQmpMessage = 1 << 20;

class QmpClient {
 public:
  explicit QmpClient(UniqueFd fd) : fd_(std::move(fd)) {}

  // Reads the greeting and negotiates capabilities. Must precede Execute().
  [[nodiscard]] Result<nlohmann::json> Handshake(Deadline deadline);
  // Runs a command; returns its "return" value. A QMP error reply is a kBackend error
  // carrying QEMU's description. Asynchronous events that arrive meanwhile are skipped.
  [[nodiscard]] Result<nlohmann::json> Execute(const std::string& command,
                                               const nlohmann::json& arguments, Deadline deadline);
  // Passes `fd` to QEMU under `name` (QMP getfd, the descriptor travels as SCM_RIGHTS),
  // for commands that take "fd:<name>".
  [[nodiscard]] Result<void> SendFd(const std::string& name, int fd, Deadline deadline);

 private:
  Result<nlohmann::json> ReadMessage(Deadline deadline);
  // Reads up to the reply of `command`, skipping events.
  Result<nlohmann::json> ReadReturn(const std::string& command, Deadline deadline);

  UniqueFd fd_;
  std::string buffer_;
};

}  // namespace vessel::engine::qemu
