#include "vmm/devices/virtio/host_socket.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <cerrno>
#include <cstring>

namespace vessel::vmm::virtio {
namespace {

Result<sockaddr_un> Address(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return Fail(Error::InvalidConfig(
        "socket path", "'" + path + "' must be 1 to 107 bytes long to be a unix socket address"));
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  return addr;
}

}  // namespace

Result<UniqueFd> ListenUnix(const std::string& path) {
  auto addr = Address(path);
  if (!addr) return Fail(addr.error());
  struct stat st {};
  if (lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) unlink(path.c_str());
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return Fail(Error::HostIo("socket for " + path, errno));
  if (bind(fd.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)) != 0) {
    return Fail(Error::HostIo("binding " + path, errno));
  }
  if (listen(fd.get(), 16) != 0) return Fail(Error::HostIo("listening on " + path, errno));
  return fd;
}

Result<UniqueFd> ConnectUnix(const std::string& path) {
  auto addr = Address(path);
  if (!addr) return Fail(addr.error());
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return Fail(Error::HostIo("socket for " + path, errno));
  // A unix connect completes at once or fails (EAGAIN: the listener's backlog is full).
  if (connect(fd.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)) != 0) {
    return Fail(Error::HostIo("connecting to " + path, errno));
  }
  return fd;
}

}  // namespace vessel::vmm::virtio
