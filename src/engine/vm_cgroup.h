// A cgroup (v2) per VM, where the host offers one: the VMM and everything it starts run
// in it, with memory.max, pids.max and cpu.max from the VM's size.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "engine/engine.h"
#include "vessel/error.h"

namespace vessel::engine {

struct CgroupLimits {
  uint64_t memory_max = 0;  // bytes
  uint32_t pids_max = 0;
  uint32_t cpu_quota_us = 0;  // per kCpuPeriodUs
};
inline constexpr uint32_t kCpuPeriodUs = 100'000;
// Threads and processes a VMM may have: its vCPUs, I/O threads and QEMU's helpers.
inline constexpr uint32_t kVmmPidsMax = 256;

// The limits of a VM of `spec`: its RAM twice (a save by copy maps a second image) plus
// 512 MiB for the VMM, kVmmPidsMax, and one CPU per vCPU.
CgroupLimits LimitsFor(const VmSpec& spec);

// Where VM cgroups go under the cgroup v2 hierarchy mounted at `mount`: `mount`/vessel,
// made with the memory, pids and cpu controllers enabled for its children. nullopt when
// `mount` is no cgroup v2 root that offers them and lets us write (a host with cgroup v1,
// or without the rights): VMs then run without one.
std::optional<std::string> CgroupParentIn(const std::string& mount);
// CgroupParentIn of /sys/fs/cgroup, else /sys/fs/cgroup/unified; looked up once.
const std::optional<std::string>& CgroupParent();

class VmCgroup {
 public:
  // Makes `parent`/vm-<id> with `limits`. kHostIo when it cannot.
  [[nodiscard]] static Result<VmCgroup> Create(const std::string& parent, const std::string& id,
                                               const CgroupLimits& limits);
  VmCgroup(VmCgroup&& other) noexcept : path_(std::exchange(other.path_, {})) {}
  VmCgroup& operator=(VmCgroup&& other) noexcept;
  VmCgroup(const VmCgroup&) = delete;
  VmCgroup& operator=(const VmCgroup&) = delete;
  // Removes the cgroup; its processes must be gone (the VMM's pid namespace dies with it).
  ~VmCgroup() { Remove(); }

  [[nodiscard]] const std::string& path() const { return path_; }
  // What a child writes its pid to, to join.
  [[nodiscard]] std::string procs() const { return path_ + "/cgroup.procs"; }
  void Remove();

 private:
  explicit VmCgroup(std::string path) : path_(std::move(path)) {}
  std::string path_;
};

// Removes the cgroup of the VM `id` if one was left (its runtime directory was stale).
void RemoveStaleCgroup(const std::string& id);

}  // namespace vessel::engine
