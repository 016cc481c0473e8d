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

#include "vm_test_env.h"

namespace vessel::testing {
namespace {
std::string* runtime_root = nullptr;
}

const std::string& TestRuntimeRoot() { return *runtime_root; }

std::vector<int> LiveVmmProcesses() {
  std::vector<int> pids;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    std::string name = entry.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream in(entry.path() / "cmdline", std::ios::binary);
    std::string cmdline((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (cmdline.find("qemu-system") != std::string::npos &&
        cmdline.find(TestRuntimeRoot()) != std::string::npos) {
      // A zombie still shows its cmdline as empty; any match here is a live process.
      pids.push_back(std::stoi(name));
    }
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
  auto sandbox = Sandbox::Create(config);
  if (!sandbox) {
    ADD_FAILURE() << "Sandbox::Create: " << sandbox.error().ToString();
    return nullptr;
  }
  return std::move(*sandbox);
}

}  // namespace vessel::testing

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
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
    std::cerr << "LEAK: QEMU process " << pid << " still running\n";
    kill(pid, SIGKILL);
  }
  for (const auto& name : left) std::cerr << "LEAK: runtime entry " << name << " left behind\n";
  std::filesystem::remove_all(root_template);
  if (!pids.empty() || !left.empty()) return 1;
  std::cout << "no VMM process and no runtime file left behind\n";
  return status;
}
