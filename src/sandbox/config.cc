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

Result<engine::VmSpec> ValidateConfig(const SandboxConfig& config, const engine::Engine& engine) {
  if (config.vcpus < 1 || config.vcpus > engine.max_vcpus()) {
    return Fail(Error::InvalidConfig(
        "vcpus", fmt::format("{} is outside 1..{}", config.vcpus, engine.max_vcpus())));
  }
  if (config.memory_mib < kMinMemoryMib || config.memory_mib > engine.max_memory_mib()) {
    return Fail(Error::InvalidConfig(
        "memory_mib", fmt::format("{} MiB is outside {}..{} MiB", config.memory_mib, kMinMemoryMib,
                                  engine.max_memory_mib())));
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
  spec.vcpus = config.vcpus;
  spec.memory_mib = config.memory_mib;
  spec.name = config.name;
  return spec;
}

}  // namespace sandbox
}  // namespace vessel
