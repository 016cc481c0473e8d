// `vessel doctor`: what this host can run, and what is missing.
#include <unistd.h>

#include <fmt/format.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <string>

#include "base/io.h"
#include "base/subprocess.h"
#include "cli/cli.h"
#include "engine/host.h"
#include "engine/runtime_dir.h"
#include "engine/select.h"
#include "image/image.h"
#include "vessel/sandbox.h"

namespace vessel::cli {
namespace {

// How long `qemu-system-x86_64 --version` may take.
constexpr auto kVersionTimeout = std::chrono::seconds(10);
constexpr size_t kMaxVersionText = 4096;

// What `qemu-system-x86_64 --version` prints; empty when it cannot run.
std::string QemuVersionText() {
  char path[] = "/tmp/vessel-doctor-XXXXXX";
  int fd = ::mkstemp(path);
  if (fd < 0) return {};
  ::close(fd);
  std::string text;
  auto qemu = Subprocess::Spawn({.argv = {"qemu-system-x86_64", "--version"}, .output_path = path});
  if (qemu && qemu->WaitFor(kVersionTimeout)) {
    text = ReadFileToString(path, kMaxVersionText).value_or("");
  }
  ::unlink(path);
  return text;
}

}  // namespace

int Doctor() {
  bool ok = true;
  auto line = [](bool good, const std::string& what, const std::string& detail) {
    std::cout << (good ? "ok      " : "MISSING ") << what << ": " << detail << "\n";
  };
  // The same probe and rule as every sandbox's --engine auto.
  auto host = engine::Host::Probe();
  const auto& kvm_unusable = host.kvm_unusable;
  const std::string& vmm = host.vmm;
  auto chosen = engine::Select(EngineKind::kAuto, host);
  bool kvm_engine = chosen && *chosen == EngineKind::kKvm;
  std::cout << "engine  " << (kvm_engine ? "kvm" : "qemu") << " by default (--engine auto)\n";
  line(kvm_engine, "engine kvm",
       kvm_unusable  ? "cannot run: " + *kvm_unusable
       : vmm.empty() ? "cannot run: vessel-vmm not found (set $VESSEL_VMM)"
                     : "vessel-vmm at " + vmm);
  std::cout << "engine  qemu with "
            << (!kvm_unusable ? "KVM (/dev/kvm is usable)"
                              : "TCG (no usable /dev/kvm: software emulation, slower)")
            << "\n";

  std::string version = QemuVersionText();
  int major = 0, minor = 0;
  if (auto at = version.find("version "); at != std::string::npos) {
    std::sscanf(version.c_str() + at, "version %d.%d", &major, &minor);
  }
  if (major == 0) {
    line(kvm_engine, "QEMU", "qemu-system-x86_64 not found (scripts/bootstrap installs it)");
    ok &= kvm_engine;
  } else {
    // The microvm machine with virtio-mmio devices on the command line needs 5.0 or later.
    bool supported = major >= 5;
    line(supported, "QEMU",
         std::to_string(major) + "." + std::to_string(minor) +
             (supported ? " (microvm supported)" : " (too old: 5.0 or later needed)"));
    ok &= supported || kvm_engine;
    // Snapshots rely on QEMU's experimental x-ignore-shared migration capability
    // (present since 4.0) and on memory-backend-file; Vessel is tested with 7.2.
    bool tested = (major == 7 && minor == 2);
    bool present = major >= 5;
    line(present, "snapshots",
         !present ? "QEMU too old for x-ignore-shared snapshots"
         : tested ? "x-ignore-shared with QEMU 7.2 (the tested version)"
                  : "x-ignore-shared is experimental and only tested with QEMU 7.2: "
                    "check `vessel snapshot` before relying on it");
  }
  std::string dir = DefaultAssetDir();
  for (const char* asset : {"vmlinux", "initramfs.cpio"}) {
    std::string path = dir + "/" + asset;
    bool found = access(path.c_str(), R_OK) == 0;
    line(found, std::string("guest ") + asset, found ? path : path + " not found (run make)");
    ok &= found;
  }
  auto missing_tools = image::MissingTools();
  line(missing_tools.empty(), "image tools",
       missing_tools.empty() ? "mmdebstrap and mkfs.erofs (vessel image build)"
                             : fmt::format("{} not found: vessel image build cannot run "
                                           "(scripts/bootstrap installs them)",
                                           fmt::join(missing_tools, " and ")));
  image::Store store = image::Store::Default();
  auto images = store.List();
  std::string names;
  for (const auto& r : images.value_or(std::vector<image::ImageRecord>{})) {
    names += (names.empty() ? "" : ", ") + r.name;
  }
  line(images.has_value(), "images",
       !images ? images.error().message()
               : fmt::format("{} in {}{}", names.empty() ? std::string("none") : names,
                             store.root(), names.empty() ? " (vessel image build python)" : ""));
  std::string root = engine::RuntimeRoot();
  line(true, "runtime directory", root);
  // Missing confinement is reported, and leaves the exit status alone: VMs still run.
  auto jail = engine::JailConfinement();
  line(jail.ok, "VMM jail", jail.text);
  auto cgroups = engine::CgroupConfinement();
  line(cgroups.ok, "VM cgroups", cgroups.text);
  auto pages = engine::RamPageSize();
  line(pages.ok, "guest RAM", pages.text);
  uint64_t tsc = engine::HostTscKhz();
  line(tsc > 0, "host TSC rate",
       tsc ? std::to_string(tsc) + " kHz" : "unknown: the guest calibrates it itself");
  return ok ? 0 : 1;
}

}  // namespace vessel::cli
