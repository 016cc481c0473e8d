#include "engine/saved_files.h"

#include <fcntl.h>

#include <cerrno>
#include <memory>

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

Result<std::optional<VmSpec::Saved>> StateAhead::SaveAhead(int ram, bool shared,
                                                           const std::string& dir) {
  if (!shared) return std::optional<VmSpec::Saved>{};
  UniqueFd memory(::fcntl(ram, F_DUPFD_CLOEXEC, 0));
  if (!memory) return Fail(Error::HostIo("dup the VM's memory", errno));
  auto reader = Create(dir + "/" + kSavedStateFile);
  if (!reader) return Fail(std::move(reader).error());
  return std::optional<VmSpec::Saved>(
      VmSpec::Saved{std::make_shared<const UniqueFd>(std::move(memory)),
                    std::make_shared<const UniqueFd>(std::move(*reader))});
}

}  // namespace vessel::engine
