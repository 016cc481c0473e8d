#include "supervisor/state.h"

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "base/io.h"
#include "engine/runtime_dir.h"

namespace vessel::supervisor {
namespace {

constexpr const char* kStateFile = "state.json";
constexpr const char* kLockFile = "supervisor.lock";
// Starts with '.', so that no id or name is ever taken for one.
constexpr const char* kForkDirPrefix = ".fork-";
// state.json is a few hundred bytes; anything much larger is not ours.
constexpr size_t kMaxStateFileSize = 64 * 1024;

// Ids are made by the engine (hex); names are checked by ValidateName. Neither may
// reach outside the sandboxes directory.
bool IsSafeComponent(const std::string& s) {
  return !s.empty() && s.size() <= kMaxNameSize && s[0] != '.' &&
         s.find('/') == std::string::npos && s.find('\0') == std::string::npos;
}

Result<sockaddr_un> SocketAddress(const std::string& path) {
  if (auto ok = CheckSocketPath(path); !ok) return Fail(std::move(ok).error());
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
  return address;
}

}  // namespace

std::string SandboxesDir() { return engine::RuntimeRoot() + "/sandboxes"; }

Result<std::string> PrivateSandboxesDir(bool create) {
  auto root = engine::PrivateRuntimeRoot();
  if (!root) return Fail(std::move(root).error());
  std::string dir = *root + "/sandboxes";
  struct stat st {};
  if (!create && ::lstat(dir.c_str(), &st) != 0 && errno == ENOENT) return dir;
  if (auto made = MakePrivateDir(dir, /*narrow=*/true, engine::kRuntimeDirRole); !made) {
    return Fail(std::move(made).error());
  }
  return dir;
}

Result<pid_t> PeerOfThisUser(int fd) {
  ucred peer{};
  socklen_t size = sizeof(peer);
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &size) != 0) {
    return Fail(Error::HostIo("read the peer of a control socket", errno));
  }
  if (peer.uid != ::geteuid()) {
    return Fail(Error::HostIo(fmt::format("the peer of a control socket (pid {}) runs as uid "
                                          "{}, not as this user (uid {}): refused",
                                          peer.pid, peer.uid, ::geteuid()),
                              EPERM));
  }
  return peer.pid;
}
bool IsSandboxId(std::string_view id) {
  return !id.empty() && id.size() <= 64 && std::all_of(id.begin(), id.end(), [](char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
  });
}

std::string StateDir(const std::string& id) { return SandboxesDir() + "/" + id; }
std::string ControlSocketPath(const std::string& id) { return StateDir(id) + "/control.sock"; }
std::string SupervisorLogPath(const std::string& id) { return StateDir(id) + "/supervisor.log"; }

Result<void> WriteRecord(const SandboxRecord& record) {
  nlohmann::json json = {
      {"id", record.id},
      {"name", record.name},
      {"pid", record.pid},
      {"engine", record.engine},
      {"memory_mib", record.memory_mib},
      {"vcpus", record.vcpus},
      {"created", record.created},
      {"state", record.failed ? "failed" : "running"},
      {"restored_from", record.restored_from},
      {"forked_from", record.forked_from},
  };
  return WriteSandboxFile(record.id, kStateFile, json.dump(2) + "\n");
}

Result<void> WriteSandboxFile(const std::string& id, std::string_view name,
                              std::string_view content) {
  if (!IsSafeComponent(id)) return Fail(Error::InvalidConfig("ID", "\"" + id + "\" is not an id"));
  auto dir = PrivateSandboxesDir(/*create=*/true);
  if (!dir) return Fail(std::move(dir).error());
  std::string path = fmt::format("{}/{}", StateDir(id), name);
  std::string temporary = path + ".tmp";
  if (auto written = WriteStringToFile(temporary, content); !written) return written;
  if (::rename(temporary.c_str(), path.c_str()) != 0) {
    return Fail(Error::HostIo("rename " + temporary, errno));
  }
  return {};
}

Result<std::string> ReadSandboxFile(const std::string& id, std::string_view name,
                                    size_t max_bytes) {
  if (!IsSafeComponent(id)) return Fail(Error::InvalidConfig("ID", "\"" + id + "\" is not an id"));
  auto dir = PrivateSandboxesDir(/*create=*/false);
  if (!dir) return Fail(std::move(dir).error());
  return ReadFileToString(fmt::format("{}/{}", StateDir(id), name), max_bytes);
}

Result<SandboxRecord> ReadRecord(const std::string& id) {
  if (!IsSafeComponent(id)) return Fail(Error::InvalidConfig("ID", "\"" + id + "\" is not an id"));
  auto dir = PrivateSandboxesDir(/*create=*/false);
  if (!dir) return Fail(std::move(dir).error());
  std::string path = StateDir(id) + "/" + kStateFile;
  auto text = ReadFileToString(path, kMaxStateFileSize);
  if (!text) return Fail(std::move(text).error());
  auto json = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  auto bad = [&](const char* field) {
    return Fail(Error::HostIo(
        fmt::format("read {}: field \"{}\" is missing or malformed", path, field), EINVAL));
  };
  if (!json.is_object()) return bad("(the whole file)");
  SandboxRecord record;
  auto text_field = [&](const char* field, std::string& out) {
    auto it = json.find(field);
    if (it == json.end() || !it->is_string()) return false;
    out = it->get<std::string>();
    return true;
  };
  auto number_field = [&](const char* field, auto& out) {
    auto it = json.find(field);
    if (it == json.end() || !it->is_number_integer()) return false;
    out = it->get<std::remove_reference_t<decltype(out)>>();
    return true;
  };
  std::string state;
  if (!text_field("id", record.id) || record.id != id) return bad("id");
  if (!text_field("name", record.name)) return bad("name");
  if (!text_field("engine", record.engine)) return bad("engine");
  if (!text_field("state", state)) return bad("state");
  if (!number_field("pid", record.pid)) return bad("pid");
  if (!number_field("memory_mib", record.memory_mib)) return bad("memory_mib");
  if (!number_field("vcpus", record.vcpus)) return bad("vcpus");
  if (!number_field("created", record.created)) return bad("created");
  record.failed = state == "failed";
  // Absent from the state of sandboxes made before restore and fork existed.
  if (json.contains("restored_from") && !text_field("restored_from", record.restored_from)) {
    return bad("restored_from");
  }
  if (json.contains("forked_from") && !text_field("forked_from", record.forked_from)) {
    return bad("forked_from");
  }
  return record;
}

Result<std::vector<std::string>> ListSandboxIds() {
  auto checked = PrivateSandboxesDir(/*create=*/false);
  if (!checked) return Fail(std::move(checked).error());
  std::vector<std::string> ids;
  DIR* dir = ::opendir(checked->c_str());
  if (!dir) return ids;
  while (dirent* entry = ::readdir(dir)) {
    std::string name = entry->d_name;
    if (IsSafeComponent(name)) ids.push_back(std::move(name));
  }
  ::closedir(dir);
  std::sort(ids.begin(), ids.end());
  return ids;
}

Result<SandboxRecord> Resolve(const std::string& id_or_name) {
  auto ids = ListSandboxIds();
  if (!ids) return Fail(std::move(ids).error());
  if (IsSafeComponent(id_or_name)) {
    struct stat st {};
    if (::stat(StateDir(id_or_name).c_str(), &st) == 0) {
      auto record = ReadRecord(id_or_name);
      if (record) return record;
      // A directory without a readable state.json: the supervisor died while starting,
      // or the file was damaged. `rm` still needs to name it.
      SandboxRecord bare;
      bare.id = id_or_name;
      return bare;
    }
  }
  for (const auto& id : *ids) {
    auto record = ReadRecord(id);
    if (record && !record->name.empty() && record->name == id_or_name) return record;
  }
  return Fail(Error::InvalidConfig(
      "ID", fmt::format("no sandbox has the id or name \"{}\" (see vessel ls)", id_or_name)));
}

Result<void> ValidateName(const std::string& name) {
  if (name.empty() || name.size() > kMaxNameSize) {
    return Fail(
        Error::InvalidConfig("name", fmt::format("must be 1 to {} characters", kMaxNameSize)));
  }
  bool allowed = std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '.' || c == '-';
  });
  if (!allowed || name[0] == '.' || name[0] == '-') {
    return Fail(Error::InvalidConfig(
        "name", "\"" + name +
                    "\" may only hold letters, digits, '_', '.' and '-', and start with "
                    "a letter, digit or '_'"));
  }
  return {};
}

Result<UniqueFd> LockAsSupervisor(const std::string& id) {
  std::string path = StateDir(id) + "/" + kLockFile;
  UniqueFd lock(::open(path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!lock) return Fail(Error::HostIo("create " + path, errno));
  if (::flock(lock.get(), LOCK_EX | LOCK_NB) != 0)
    return Fail(Error::HostIo("lock " + path, errno));
  return lock;
}

bool SupervisorAlive(const std::string& id) {
  UniqueFd lock(
      ::open((StateDir(id) + "/" + kLockFile).c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!lock) return false;
  // Taking the lock succeeds only when nobody holds it; closing the fd releases it again.
  return ::flock(lock.get(), LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK;
}

Result<void> CheckSocketPath(const std::string& path) {
  if (path.size() >= sizeof(sockaddr_un::sun_path)) {
    return Fail(Error::InvalidConfig(
        "VESSEL_RUNTIME_DIR",
        fmt::format("the control socket path {} is {} bytes, more than a unix socket allows ({}); "
                    "set VESSEL_RUNTIME_DIR to a shorter directory",
                    path, path.size(), sizeof(sockaddr_un::sun_path) - 1)));
  }
  return {};
}

Result<UniqueFd> ListenControl(const std::string& path) {
  auto address = SocketAddress(path);
  if (!address) return Fail(std::move(address).error());
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return Fail(Error::HostIo("create the control socket", errno));
  ::unlink(path.c_str());
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&*address), sizeof(*address)) != 0) {
    return Fail(Error::HostIo("bind " + path, errno));
  }
  if (::listen(fd.get(), 64) != 0) return Fail(Error::HostIo("listen on " + path, errno));
  return fd;
}

Result<UniqueFd> ConnectControl(const std::string& path) {
  auto address = SocketAddress(path);
  if (!address) return Fail(std::move(address).error());
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return Fail(Error::HostIo("create a socket", errno));
  int r;
  do {
    r = ::connect(fd.get(), reinterpret_cast<const sockaddr*>(&*address), sizeof(*address));
  } while (r != 0 && errno == EINTR);
  if (r != 0) return Fail(Error::HostIo("connect to " + path, errno));
  if (auto peer = PeerOfThisUser(fd.get()); !peer) return Fail(std::move(peer).error());
  return fd;
}

Result<UniqueFd> ConnectToRunning(const SandboxRecord& record) {
  const std::string& id = record.id;
  if (record.failed) {
    return Fail(Error::Backend(fmt::format(
        "sandbox {} has failed (its VM stopped); remove it with vessel rm {}", id, id)));
  }
  auto fd = ConnectControl(ControlSocketPath(id));
  if (!fd) {
    return Fail(Error::Backend(fmt::format(
        "sandbox {} is not running (its supervisor is gone); remove it with vessel rm {}", id,
        id)));
  }
  return fd;
}

Result<ForkDir> ForkDir::Create() {
  for (int attempt = 0; attempt < 3; ++attempt) {
    auto sandboxes = PrivateSandboxesDir(/*create=*/true);
    if (!sandboxes) return Fail(std::move(sandboxes).error());
    std::string path = *sandboxes + "/" + kForkDirPrefix + "XXXXXX";
    if (!::mkdtemp(path.data())) {
      // `rm` of the last sandbox removes sandboxes/ itself: retry if it just did.
      if (errno == ENOENT) continue;
      return Fail(Error::HostIo("create a directory in " + SandboxesDir(), errno));
    }
    UniqueFd lock(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!lock || ::flock(lock.get(), LOCK_EX) != 0) {
      int error = errno;
      ::rmdir(path.c_str());
      return Fail(Error::HostIo("lock " + path, error));
    }
    // A sweep may have taken the directory for a dead fork's between mkdtemp and flock.
    struct stat by_path {};
    struct stat by_fd {};
    if (::stat(path.c_str(), &by_path) == 0 && ::fstat(lock.get(), &by_fd) == 0 &&
        by_path.st_dev == by_fd.st_dev && by_path.st_ino == by_fd.st_ino) {
      return ForkDir(std::move(path), std::move(lock));
    }
  }
  return Fail(Error::HostIo("create a fork directory in " + SandboxesDir(), EAGAIN));
}

ForkDir::~ForkDir() {
  if (path_.empty()) return;
  (void)RemoveTree(path_);
  ::rmdir(SandboxesDir().c_str());
}

namespace {

// Removes the fork directories whose owner is gone: nobody holds their lock.
void SweepStaleForkDirs() {
  DIR* dir = ::opendir(SandboxesDir().c_str());
  if (!dir) return;
  while (dirent* entry = ::readdir(dir)) {
    std::string name = entry->d_name;
    if (!name.starts_with(kForkDirPrefix)) continue;
    std::string path = SandboxesDir() + "/" + name;
    UniqueFd lock(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!lock || ::flock(lock.get(), LOCK_EX | LOCK_NB) != 0) continue;
    (void)RemoveTree(path);
  }
  ::closedir(dir);
}

}  // namespace

namespace {

int64_t NowSeconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

std::optional<Listing> Inspect(const std::string& id) {
  bool alive = SupervisorAlive(id);
  auto record = ReadRecord(id);
  Listing listing;
  if (!record) {
    // Being set up right now: not there yet.
    if (alive) return std::nullopt;
    listing.record.id = id;
    listing.state = "dead";
    struct stat st {};
    if (::stat(StateDir(id).c_str(), &st) == 0) listing.age_seconds = NowSeconds() - st.st_mtime;
    return listing;
  }
  listing.record = *record;
  listing.age_seconds = NowSeconds() - record->created;
  if (record->failed) {
    listing.state = "failed";
  } else if (alive && ConnectControl(ControlSocketPath(id))) {
    listing.state = "running";
  } else {
    listing.state = "dead";
  }
  return listing;
}

void RemoveSandboxState(const std::string& id) {
  if (IsSafeComponent(id)) (void)RemoveTree(StateDir(id));
  engine::SweepStaleRuntimeDirs();
  SweepStaleForkDirs();
  // Fails while other sandboxes exist, as it should.
  ::rmdir(SandboxesDir().c_str());
}

}  // namespace vessel::supervisor
