#include "engine/runtime_dir.h"

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <filesystem>

#include "base/io.h"
#include "base/private_dir.h"
#include "engine/vm_cgroup.h"

namespace vessel::engine {
namespace {

constexpr const char* kLockFile = "owner.lock";

std::string RandomId() {
  uint8_t bytes[6];
  if (getrandom(bytes, sizeof(bytes), 0) != sizeof(bytes)) {
    auto t = static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
    for (size_t i = 0; i < sizeof(bytes); ++i) bytes[i] = static_cast<uint8_t>(t >> (8 * i));
  }
  std::string id;
  for (uint8_t b : bytes) id += fmt::format("{:02x}", b);
  return id;
}

}  // namespace

const PrivateDirRole kRuntimeDirRole{"the runtime directory",
                                    "the sandboxes' sockets and state",
                                    "VESSEL_RUNTIME_DIR"};

Result<std::string> PrivateRuntimeRoot() {
  std::string root = RuntimeRoot();
  const char* chosen = std::getenv("VESSEL_RUNTIME_DIR");
  if (auto made = MakePrivateDir(root, /*narrow=*/!(chosen && *chosen), kRuntimeDirRole); !made) {
    return Fail(std::move(made).error());
  }
  return root;
}

std::string RuntimeRoot() {
  if (const char* dir = std::getenv("VESSEL_RUNTIME_DIR"); dir && *dir) return dir;
  if (const char* dir = std::getenv("XDG_RUNTIME_DIR"); dir && *dir)
    return std::string(dir) + "/vessel";
  if (geteuid() == 0) return "/run/vessel";
  return fmt::format("/tmp/vessel-{}", geteuid());
}

Result<RuntimeDir> RuntimeDir::Create() {
  auto private_root = PrivateRuntimeRoot();
  if (!private_root) return Fail(std::move(private_root).error());
  const std::string& root = *private_root;
  RuntimeDir dir;
  for (int attempt = 0; attempt < 8; ++attempt) {
    dir.id_ = RandomId();
    dir.path_ = root + "/vm-" + dir.id_;
    if (::mkdir(dir.path_.c_str(), 0700) == 0) break;
    if (errno != EEXIST) return Fail(Error::HostIo("create " + dir.path_, errno));
    dir.path_.clear();
  }
  if (dir.path_.empty()) return Fail(Error::HostIo("create a VM directory in " + root, EEXIST));
  // The lock file appears under its name already locked: a sweep in another thread or
  // process that found it unlocked would take the directory for an orphan.
  std::string pending = dir.File(std::string(kLockFile) + ".new");
  dir.lock_ = UniqueFd(::open(pending.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!dir.lock_ || ::flock(dir.lock_.get(), LOCK_EX | LOCK_NB) != 0 ||
      ::rename(pending.c_str(), dir.File(kLockFile).c_str()) != 0) {
    int e = errno;
    dir.Remove();
    return Fail(Error::HostIo("lock the VM directory", e));
  }
  return dir;
}

void RuntimeDir::Remove() {
  if (path_.empty()) return;
  (void)RemoveTree(path_);
  lock_.Reset();
  path_.clear();
}

int SweepStaleRuntimeDirs() {
  std::string root = RuntimeRoot();
  DIR* d = ::opendir(root.c_str());
  if (!d) return 0;
  int removed = 0;
  while (dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (!name.starts_with("vm-")) continue;
    std::string path = root + "/" + name;
    UniqueFd lock(::open((path + "/" + kLockFile).c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC));
    // No lock file: a directory being created right now, or a leftover; only a
    // directory whose lock can be taken is known to be orphaned.
    if (!lock) continue;
    if (::flock(lock.get(), LOCK_EX | LOCK_NB) != 0) continue;
    if (RemoveTree(path)) ++removed;
    RemoveStaleCgroup(name.substr(3));
  }
  ::closedir(d);
  return removed;
}

std::string RuntimeDir::Diagnostics(const std::string& vmm) const {
  constexpr size_t kTailBytes = 2048;
  std::string out;
  std::string log = ReadFileTail(File("vmm.log"), kTailBytes);
  if (!log.empty()) out += vmm + " said: " + log;
  std::string console = ReadFileTail(File("console.log"), kTailBytes);
  if (!console.empty())
    out += (out.empty() ? "" : "\n") + std::string("guest console tail:\n") + console;
  return out.empty() ? "no output from " + vmm + " or the guest console" : out;
}

}  // namespace vessel::engine
