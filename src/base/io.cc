#include "base/io.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

namespace vessel {
namespace {

Result<void> WaitFor(int fd, short events, Deadline deadline, const char* what) {
  for (;;) {
    pollfd p{fd, events, 0};
    int n = poll(&p, 1, deadline.PollTimeoutMs());
    if (n < 0) {
      if (errno == EINTR) continue;
      return Fail(Error::HostIo(std::string("poll ") + what, errno));
    }
    if (n == 0) return Fail(Error::Timeout(std::string(what) + ": timed out"));
    return {};
  }
}

}  // namespace

Result<void> WriteAll(int fd, std::span<const uint8_t> data, Deadline deadline, const char* what) {
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && errno == ENOTSOCK) n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        if (auto r = WaitFor(fd, POLLOUT, deadline, what); !r) return r;
        continue;
      }
      if (errno == EPIPE || errno == ECONNRESET) {
        return Fail(Error::Backend(std::string(what) + ": connection closed by the peer"));
      }
      return Fail(Error::HostIo(std::string("write ") + what, errno));
    }
    data = data.subspan(static_cast<size_t>(n));
  }
  return {};
}

Result<size_t> ReadSome(int fd, std::span<uint8_t> buffer, Deadline deadline, const char* what) {
  for (;;) {
    if (auto r = WaitFor(fd, POLLIN, deadline, what); !r) return Fail(std::move(r).error());
    ssize_t n = ::read(fd, buffer.data(), buffer.size());
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      if (errno == ECONNRESET) return 0;
      return Fail(Error::HostIo(std::string("read ") + what, errno));
    }
    return static_cast<size_t>(n);
  }
}

Result<std::string> ReadFileToString(const std::string& path, size_t max_bytes) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return Fail(Error::HostIo("open " + path, errno));
  std::string out;
  char buf[8192];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Fail(Error::HostIo("read " + path, errno));
    }
    if (n == 0) return out;
    if (out.size() + static_cast<size_t>(n) > max_bytes) {
      return Fail(Error::HostIo("read " + path + " (larger than expected)", EFBIG));
    }
    out.append(buf, static_cast<size_t>(n));
  }
}

Result<void> WriteStringToFile(const std::string& path, std::string_view data) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd) return Fail(Error::HostIo("create " + path, errno));
  return WriteAll(fd.get(), {reinterpret_cast<const uint8_t*>(data.data()), data.size()},
                  Deadline::Never(), path.c_str());
}

std::string ReadFileTail(const std::string& path, size_t max_bytes) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return {};
  struct stat st {};
  if (fstat(fd.get(), &st) != 0) return {};
  off_t start =
      st.st_size > static_cast<off_t>(max_bytes) ? st.st_size - static_cast<off_t>(max_bytes) : 0;
  std::string out(static_cast<size_t>(st.st_size - start), '\0');
  ssize_t n = ::pread(fd.get(), out.data(), out.size(), start);
  out.resize(n > 0 ? static_cast<size_t>(n) : 0);
  return out;
}

Result<void> RemoveTree(const std::string& path) {
  std::error_code ec;
  std::filesystem::remove_all(path, ec);
  if (ec) return Fail(Error::HostIo("remove " + path, ec.value()));
  return {};
}

bool IsReadableFile(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(path.c_str(), R_OK) == 0;
}

Result<void> WriteAllAt(int fd, std::span<const uint8_t> data, off_t offset, const char* what) {
  while (!data.empty()) {
    ssize_t n = ::pwrite(fd, data.data(), data.size(), offset);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Fail(Error::HostIo(std::string("write ") + what, errno));
    data = data.subspan(static_cast<size_t>(n));
    offset += n;
  }
  return {};
}

Result<void> ReadExactlyAt(int fd, std::span<uint8_t> buffer, off_t offset, const char* what) {
  while (!buffer.empty()) {
    ssize_t n = ::pread(fd, buffer.data(), buffer.size(), offset);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Fail(Error::HostIo(std::string("read ") + what, errno));
    if (n == 0)
      return Fail(Error::HostIo(std::string("read ") + what + ": the file ended early", EIO));
    buffer = buffer.subspan(static_cast<size_t>(n));
    offset += n;
  }
  return {};
}

Result<std::vector<uint8_t>> ReadAllAt(int fd, size_t max_bytes, const char* what) {
  std::vector<uint8_t> out;
  uint8_t buffer[64 * 1024];
  for (;;) {
    ssize_t n = ::pread(fd, buffer, sizeof(buffer), static_cast<off_t>(out.size()));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Fail(Error::HostIo(std::string("read ") + what, errno));
    if (n == 0) return out;
    if (out.size() + static_cast<size_t>(n) > max_bytes) {
      return Fail(Error::SnapshotFormat(std::string(what) + " holds more than " +
                                        std::to_string(max_bytes) + " bytes"));
    }
    out.insert(out.end(), buffer, buffer + n);
  }
}

bool IsZeros(std::span<const uint8_t> data) {
  return data.empty() ||
         (data[0] == 0 && std::memcmp(data.data(), data.data() + 1, data.size() - 1) == 0);
}

namespace {

// Copies `in`'s bytes [from, to) to the same offsets of `out`, leaving its pages of zeros
// unwritten.
Result<void> CopyNonZeroPages(int in, int out, off_t from, off_t to, std::span<uint8_t> buffer) {
  constexpr size_t kPage = 4096;
  while (from < to) {
    size_t want =
        static_cast<size_t>(std::min<off_t>(to - from, static_cast<off_t>(buffer.size())));
    if (auto r = ReadExactlyAt(in, buffer.first(want), from, "copy"); !r) return r;
    // Runs of pages with data, each written at once.
    for (size_t at = 0; at < want;) {
      size_t page = std::min(kPage, want - at);
      if (IsZeros(buffer.subspan(at, page))) {
        at += page;
        continue;
      }
      size_t end = at + page;
      while (end < want && !IsZeros(buffer.subspan(end, std::min(kPage, want - end)))) {
        end += std::min(kPage, want - end);
      }
      if (auto r =
              WriteAllAt(out, buffer.subspan(at, end - at), from + static_cast<off_t>(at), "copy");
          !r) {
        return r;
      }
      at = end;
    }
    from += static_cast<off_t>(want);
  }
  return {};
}

}  // namespace

Result<void> ForEachDataExtent(int fd, uint64_t size,
                               const std::function<Result<void>(uint64_t, uint64_t)>& visit) {
  uint64_t at = 0;
  while (at < size) {
    off_t data = ::lseek(fd, static_cast<off_t>(at), SEEK_DATA);
    if (data < 0 && errno == ENXIO) return {};  // nothing but a hole from `at` on
    if (data < 0 && (errno == EINVAL || errno == EOPNOTSUPP)) return visit(at, size);
    if (data < 0) return Fail(Error::HostIo("seek to data", errno));
    if (static_cast<uint64_t>(data) >= size) return {};
    off_t hole = ::lseek(fd, data, SEEK_HOLE);
    if (hole < 0) return Fail(Error::HostIo("seek to a hole", errno));
    uint64_t end = std::min(static_cast<uint64_t>(hole), size);
    // A hole punched between the two seeks: the rest is taken as data, so `at` advances.
    if (end <= static_cast<uint64_t>(data)) end = size;
    if (auto r = visit(static_cast<uint64_t>(data), end); !r) return r;
    at = end;
  }
  return {};
}

Result<void> CopyDataSkippingZeros(int in, int out, off_t size) {
  std::vector<uint8_t> buffer(size_t{1} << 20);
  return ForEachDataExtent(in, static_cast<uint64_t>(size), [&](uint64_t begin, uint64_t end) {
    return CopyNonZeroPages(in, out, static_cast<off_t>(begin), static_cast<off_t>(end), buffer);
  });
}

}  // namespace vessel
