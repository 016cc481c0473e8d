// ioctl(2) as the VMM makes it: retried when a signal interrupts it, with errno turned into
// an Error naming the request.
#pragma once

#include <sys/ioctl.h>

#include <cerrno>
#include <string>
#include <string_view>

#include "vessel/error.h"

namespace vessel::vmm {

// Requests are `unsigned long` in the kernel's ioctl; the macros make int constants.
template <typename... Args>
int Ioctl(int fd, unsigned long request, Args... args) {
  int rc;
  do {
    rc = ::ioctl(fd, request, args...);
  } while (rc < 0 && errno == EINTR);
  return rc;
}

// The failure of the request `what` that just returned -1.
inline Error KvmError(std::string_view what) { return Error::HostIo(std::string(what), errno); }

}  // namespace vessel::vmm
