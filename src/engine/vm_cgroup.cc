#include "engine/vm_cgroup.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <thread>

#include "base/io.h"

namespace vessel::engine {
namespace {

constexpr const char* kControllers[] = {"memory", "pids", "cpu"};
constexpr uint64_t kMiB = 1024 * 1024;
constexpr uint64_t kVmmOverhead = 512 * kMiB;

Result<void> WriteControl(const std::string& path, const std::string& value) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd) return Fail(Error::HostIo("open " + path, errno));
  ssize_t n = ::write(fd.get(), value.data(), value.size());
  if (n != static_cast<ssize_t>(value.size())) {
    return Fail(Error::HostIo("write " + value + " to " + path, n < 0 ? errno : EIO));
  }
  return {};
}

bool Offers(const std::string& controllers_file) {
  auto text = ReadFileToString(controllers_file, 4096);
  if (!text) return false;
  std::string words = " " + *text + " ";
  for (char& c : words) {
    if (c == '\n') c = ' ';
  }
  for (const char* name : kControllers) {
    if (words.find(fmt::format(" {} ", name)) == std::string::npos) return false;
  }
  return true;
}

}  // namespace

CgroupLimits LimitsFor(const VmSpec& spec) {
  return {.memory_max = 2 * uint64_t{spec.memory_mib} * kMiB + kVmmOverhead,
          .pids_max = kVmmPidsMax,
          .cpu_quota_us = spec.vcpus * kCpuPeriodUs};
}

std::optional<std::string> CgroupParentIn(const std::string& mount) {
  if (!Offers(mount + "/cgroup.controllers")) return std::nullopt;
  std::string enable = "+memory +pids +cpu";
  if (!WriteControl(mount + "/cgroup.subtree_control", enable)) return std::nullopt;
  std::string parent = mount + "/vessel";
  if (::mkdir(parent.c_str(), 0755) != 0 && errno != EEXIST) return std::nullopt;
  if (!WriteControl(parent + "/cgroup.subtree_control", enable)) return std::nullopt;
  return parent;
}

const std::optional<std::string>& CgroupParent() {
  static const std::optional<std::string> parent = [] {
    if (auto found = CgroupParentIn("/sys/fs/cgroup")) return found;
    return CgroupParentIn("/sys/fs/cgroup/unified");
  }();
  return parent;
}

Result<VmCgroup> VmCgroup::Create(const std::string& parent, const std::string& id,
                                  const CgroupLimits& limits) {
  std::string path = parent + "/vm-" + id;
  if (::mkdir(path.c_str(), 0755) != 0) return Fail(Error::HostIo("create " + path, errno));
  VmCgroup cgroup(path);
  for (auto [file, value] :
       {std::pair{"memory.max", std::to_string(limits.memory_max)},
        std::pair{"pids.max", std::to_string(limits.pids_max)},
        std::pair{"cpu.max", fmt::format("{} {}", limits.cpu_quota_us, kCpuPeriodUs)}}) {
    if (auto r = WriteControl(path + "/" + file, value); !r) return Fail(std::move(r).error());
  }
  return cgroup;
}

VmCgroup& VmCgroup::operator=(VmCgroup&& other) noexcept {
  if (this != &other) {
    Remove();
    path_ = std::exchange(other.path_, {});
  }
  return *this;
}

void VmCgroup::Remove() {
  if (path_.empty()) return;
  // The last process of the cgroup may still be on its way out.
  for (int attempt = 0; attempt < 50; ++attempt) {
    if (::rmdir(path_.c_str()) == 0 || errno == ENOENT) break;
    if (errno != EBUSY) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  path_.clear();
}

void RemoveStaleCgroup(const std::string& id) {
  if (const auto& parent = CgroupParent()) ::rmdir((*parent + "/vm-" + id).c_str());
}

}  // namespace vessel::engine
