#include "sandbox/config.h"

#include <fmt/format.h>

#include <cstdlib>

#include "base/io.h"

namespace vessel {

std::string DefaultAssetDir() {
  if (const char* dir = std::getenv("VESSEL_ASSET_DIR"); dir && *dir) return dir;
  return VESSEL_BUILD_ASSET_DIR;
}

namespace sandbox {

Result<engine::AgentChannel> ChooseChannel(Channel requested, const engine::Engine& engine) {
  switch (requested) {
    case Channel::kAuto:
      return engine.SupportsVsock() ? engine::AgentChannel::kVsock
                                    : engine::AgentChannel::kVirtioSerial;
    case Channel::kVirtioSerial: return engine::AgentChannel::kVirtioSerial;
    case Channel::kVsock:
      if (!engine.SupportsVsock()) {
        return Fail(Error::Lifecycle({LifecycleError::VsockUnavailable{}})
                        .Context(fmt::format("engine {} carries the agent channel over "
                                             "virtio-serial only; engine kvm has vsock",
                                             engine.name())));
      }
      return engine::AgentChannel::kVsock;
  }
  return Fail(Error::InvalidConfig("channel", "unknown channel"));
}

Result<engine::VmSpec> ValidateConfig(const SandboxConfig& config, const engine::Engine& engine) {
  if (config.vcpus < 1 || config.vcpus > engine.max_vcpus()) {
    return Fail(Error::InvalidConfig(
        "vcpus", fmt::format("{} is outside 1..{}", config.vcpus, engine.max_vcpus())));
  }
  if (config.memory_mib < engine::kMinGuestMemoryMib ||
      config.memory_mib > engine.max_memory_mib()) {
    return Fail(Error::InvalidConfig(
        "memory_mib", fmt::format("{} MiB is outside {}..{} MiB", config.memory_mib,
                                  engine::kMinGuestMemoryMib, engine.max_memory_mib())));
  }
  if (config.boot_timeout.count() <= 0) {
    return Fail(Error::InvalidConfig("boot_timeout", "must be positive"));
  }
  engine::VmSpec spec;
  spec.kernel = config.kernel.empty() ? DefaultAssetDir() + "/vmlinux" : config.kernel;
  spec.initramfs =
      config.initramfs.empty() ? DefaultAssetDir() + "/initramfs.cpio" : config.initramfs;
  if (!IsReadableFile(spec.kernel)) {
    return Fail(Error::InvalidConfig("kernel", spec.kernel + " is not a readable file"));
  }
  if (!IsReadableFile(spec.initramfs)) {
    return Fail(Error::InvalidConfig("initramfs", spec.initramfs + " is not a readable file"));
  }
  auto channel = ChooseChannel(config.channel, engine);
  if (!channel) return Fail(std::move(channel).error());
  spec.channel = *channel;
  spec.vcpus = config.vcpus;
  spec.memory_mib = config.memory_mib;
  spec.name = config.name;
  return spec;
}

}  // namespace sandbox
}  // namespace vessel
