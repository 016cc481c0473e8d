// Shared setup for the integration tests: real VMs, real guest kernel and agent.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "vessel/sandbox.h"

namespace vessel::testing {

// The runtime root this test binary uses (a fresh temporary directory).
const std::string& TestRuntimeRoot();
// PIDs of QEMU processes started under TestRuntimeRoot() that are still alive.
std::vector<int> LiveVmmProcesses();
// Entries left in TestRuntimeRoot().
std::vector<std::string> RuntimeLeftovers();

// Creates a sandbox or fails the current test with the error.
std::unique_ptr<Sandbox> MustCreate(const SandboxConfig& config = {});

}  // namespace vessel::testing
