#include "engine/qemu/qmp_client.h"

#include <sys/socket.h>

#include <cstring>

#include "base/io.h"

namespace vessel::engine::qemu {

using nlohmann::json;

Result<json> QmpClient::ReadMessage(Deadline deadline) {
  for (;;) {
    if (auto nl = buffer_.find('\n'); nl != std::string::npos) {
      std::string line = buffer_.substr(0, nl);
      buffer_.erase(0, nl + 1);
      json message = json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (message.is_discarded() || !message.is_object()) {
        return Fail(Error::Backend("QMP: malformed message from QEMU"));
      }
      return message;
    }
    if (buffer_.size() > kMaxQmpMessage) return Fail(Error::Backend("QMP: message too long"));
    uint8_t chunk[4096];
    auto n = ReadSome(fd_.get(), chunk, deadline, "QMP");
    if (!n) return Fail(std::move(n).error());
    if (*n == 0) return Fail(Error::Backend("QMP: QEMU closed the connection"));
    buffer_.append(reinterpret_cast<const char*>(chunk), *n);
  }
}

Result<json> QmpClient::Handshake(Deadline deadline) {
  auto greeting = ReadMessage(deadline);
  if (!greeting) return greeting;
  if (!greeting->contains("QMP")) return Fail(Error::Backend("QMP: no greeting from QEMU"));
  if (auto r = Execute("qmp_capabilities", json::object(), deadline); !r) return r;
  return (*greeting)["QMP"];
}

Result<json> QmpClient::Execute(const std::string& command, const json& arguments,
                                Deadline deadline) {
  json request = {{"execute", command}};
  if (!arguments.empty()) request["arguments"] = arguments;
  std::string text = request.dump() + "\n";
  if (auto r = WriteAll(fd_.get(), {reinterpret_cast<const uint8_t*>(text.data()), text.size()},
                        deadline, "QMP");
      !r) {
    return Fail(std::move(r).error());
  }
  return ReadReturn(command, deadline);
}

Result<json> QmpClient::ReadReturn(const std::string& command, Deadline deadline) {
  for (;;) {
    auto message = ReadMessage(deadline);
    if (!message) return message;
    if (message->contains("event")) continue;
    if (auto it = message->find("return"); it != message->end()) return *it;
    if (auto it = message->find("error"); it != message->end()) {
      std::string desc = it->is_object() ? it->value("desc", "unknown error") : "unknown error";
      return Fail(Error::Backend("QMP " + command + ": " + desc));
    }
    return Fail(Error::Backend("QMP " + command + ": unexpected reply"));
  }
}

Result<void> QmpClient::SendFd(const std::string& name, int fd, Deadline deadline) {
  std::string text = json{{"execute", "getfd"}, {"arguments", {{"fdname", name}}}}.dump() + "\n";
  // The descriptor rides on the first byte; the rest of the command follows as usual.
  iovec iov{text.data(), 1};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
  cmsg->cmsg_level = SOL_SOCKET;
  cmsg->cmsg_type = SCM_RIGHTS;
  cmsg->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
  ssize_t n;
  do {
    n = ::sendmsg(fd_.get(), &msg, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n != 1) return Fail(Error::HostIo("QMP getfd: sendmsg", n < 0 ? errno : EIO));
  auto rest = std::span(reinterpret_cast<const uint8_t*>(text.data()) + 1, text.size() - 1);
  if (auto r = WriteAll(fd_.get(), rest, deadline, "QMP"); !r) return Fail(std::move(r).error());
  if (auto r = ReadReturn("getfd", deadline); !r) return Fail(std::move(r).error());
  return {};
}

}  // namespace vessel::engine::qemu
