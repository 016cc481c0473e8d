#include "engine/saved_files.h"

#include <fcntl.h>

#include <cerrno>

namespace vessel::engine {

Result<UniqueFd> CreateNewFile(const std::string& path, int flags) {
  UniqueFd fd(::open(path.c_str(), flags | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!fd) return Fail(Error::HostIo("create " + path, errno));
  return fd;
}

Result<UniqueFd> StateAhead::Create(const std::string& path) {
  auto writer = CreateNewFile(path, O_WRONLY);
  if (!writer) return Fail(std::move(writer).error());
  UniqueFd reader(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!reader) return Fail(Error::HostIo("open " + path, errno));
  path_ = path;
  writer_ = std::move(*writer);
  return reader;
}

Result<UniqueFd> StateAhead::Take(const std::string& path) {
  std::string ahead = std::exchange(path_, {});
  UniqueFd writer = std::move(writer_);
  if (ahead == path && writer) return writer;
  return CreateNewFile(path, O_WRONLY);
}

}  // namespace vessel::engine
