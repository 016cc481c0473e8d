// Integration test main: gives the run its own runtime root, and after every test has
// run, fails the run if any VMM process or runtime file was left behind.
#include <dirent.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>

#include "engine/select.h"
#include "vm_test_env.h"

namespace vessel::testing {
namespace {
std::string* runtime_root = nullptr;
EngineKind test_engine = EngineKind::kQemu;
std::chrono::milliseconds boot_timeout = SandboxConfig{}.boot_timeout;

bool ContainsToken(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

std::string ReadProcFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// $VESSEL_TEST_ENGINE resolved on this host, or an error message.
std::optional<EngineKind> EngineFromEnvironment(std::string& error) {
  const char* env = std::getenv("VESSEL_TEST_ENGINE");
  std::string name = env && *env ? env : "auto";
  EngineKind requested;
  if (name == "auto") {
    requested = EngineKind::kAuto;
  } else if (name == "qemu") {
    requested = EngineKind::kQemu;
  } else if (name == "kvm") {
    requested = EngineKind::kKvm;
  } else {
    error = "VESSEL_TEST_ENGINE must be qemu, kvm or auto, not " + name;
    return std::nullopt;
  }
  auto chosen = engine::Select(requested, engine::Host::Probe());
  if (!chosen) {
    error = "VESSEL_TEST_ENGINE=" + name + ": " + chosen.error().ToString();
    return std::nullopt;
  }
  return *chosen;
}

}  // namespace

EngineKind TestEngine() { return test_engine; }
const char* TestEngineName() { return test_engine == EngineKind::kKvm ? "kvm" : "qemu"; }
SandboxConfig TestConfig() {
  return SandboxConfig{.boot_timeout = boot_timeout, .engine = test_engine};
}

const std::string& TestRuntimeRoot() { return *runtime_root; }

long ResidentKib() {
  std::ifstream status("/proc/self/status");
  std::string key;
  long value = 0;
  while (status >> key) {
    if (key == "VmRSS:") {
      status >> value;
      return value;
    }
    status.ignore(256, '\n');
  }
  return 0;
}

std::vector<int> LiveVmmProcesses() {
  std::vector<int> pids;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    std::string name = entry.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    // A zombie shows an empty cmdline and environment; any match here is a live process.
    std::string cmdline = ReadProcFile(entry.path() / "cmdline");
    bool ours = false;
    if (ContainsToken(cmdline, "qemu-system") || ContainsToken(cmdline, "vessel-vmm")) {
      // Neither command line need name a path of this run (QEMU's console and agent are
      // descriptors, a restored VM's memory is a snapshot's): both inherit this run's
      // runtime root.
      std::string environ = ReadProcFile(entry.path() / "environ");
      ours = ContainsToken(environ, std::string("VESSEL_RUNTIME_DIR=") + TestRuntimeRoot() + '\0');
    }
    if (ours) pids.push_back(std::stoi(name));
  }
  return pids;
}

std::vector<std::string> RuntimeLeftovers() {
  std::vector<std::string> left;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(TestRuntimeRoot(), ec)) {
    left.push_back(entry.path().filename());
  }
  return left;
}

std::unique_ptr<Sandbox> MustCreate(const SandboxConfig& config) {
  SandboxConfig on_test_engine = config;
  if (on_test_engine.engine == EngineKind::kAuto) on_test_engine.engine = test_engine;
  auto sandbox = Sandbox::Create(on_test_engine);
  if (!sandbox) {
    ADD_FAILURE() << "Sandbox::Create: " << sandbox.error().ToString();
    return nullptr;
  }
  return std::move(*sandbox);
}

}  // namespace vessel::testing

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  std::string error;
  auto engine = vessel::testing::EngineFromEnvironment(error);
  if (!engine) {
    std::cerr << error << "\n";
    return 2;
  }
  vessel::testing::test_engine = *engine;
  if (const char* seconds = std::getenv("VESSEL_TEST_BOOT_TIMEOUT"); seconds && *seconds) {
    vessel::testing::boot_timeout = std::chrono::seconds(std::atoi(seconds));
  }
  std::cout << "integration tests on engine " << vessel::testing::TestEngineName() << "\n";
  char root_template[] = "/tmp/vessel-it-XXXXXX";
  if (!mkdtemp(root_template)) {
    perror("mkdtemp");
    return 1;
  }
  vessel::testing::runtime_root = new std::string(root_template);
  setenv("VESSEL_RUNTIME_DIR", root_template, 1);

  int status = RUN_ALL_TESTS();

  auto pids = vessel::testing::LiveVmmProcesses();
  auto left = vessel::testing::RuntimeLeftovers();
  for (int pid : pids) {
    std::cerr << "LEAK: VMM process " << pid << " still running\n";
    kill(pid, SIGKILL);
  }
  for (const auto& name : left) std::cerr << "LEAK: runtime entry " << name << " left behind\n";
  std::filesystem::remove_all(root_template);
  if (!pids.empty() || !left.empty()) return 1;
  std::cout << "no VMM process and no runtime file left behind\n";
  return status;
}
