#include "sandbox/config.h"

#include <fmt/format.h>

#include <cstdlib>

#include "base/io.h"
#include "image/image.h"
#include "sandbox/egress.h"

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

void AttachImage(engine::VmSpec& spec, std::shared_ptr<const image::ImageUse> use,
                 uint32_t overlay_mib) {
  spec.image = use->path;
  // The agent mounts the first virtio-blk disk (guest/agent/root.h).
  spec.guest_args = "vessel.image=/dev/vda";
  if (overlay_mib != 0) spec.guest_args += fmt::format(" vessel.overlay_mib={}", overlay_mib);
  spec.image_ref = engine::VmSpec::ImageRef{use->record.digest, use->record.name, use};
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
  if (config.forks_ahead > kMaxForks) {
    return Fail(Error::InvalidConfig(
        "forks_ahead", fmt::format("{} is outside 0..{}", config.forks_ahead, kMaxForks)));
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
  auto network = CheckNetworkPolicy(config.network);
  if (!network) return Fail(std::move(network).error());
  spec.network = std::move(network->policy);
  if (config.overlay_mib != 0 && config.image.empty()) {
    return Fail(Error::InvalidConfig("overlay_mib", "is for a root image, and there is none"));
  }
  if (config.overlay_mib > config.memory_mib) {
    return Fail(Error::InvalidConfig(
        "overlay_mib", fmt::format("{} MiB is more than the guest's {} MiB of memory",
                                   config.overlay_mib, config.memory_mib)));
  }
  if (!config.image.empty()) {
    auto use = image::Store::Default().Use(config.image);
    if (!use) return Fail(std::move(use).error());
    AttachImage(spec, std::make_shared<image::ImageUse>(std::move(*use)), config.overlay_mib);
  }
  return spec;
}

}  // namespace sandbox
}  // namespace vessel
