// Shared setup for the integration tests: real VMs, real guest kernel and agent.
//
// The engine-independent suites run on the engine that $VESSEL_TEST_ENGINE names (qemu,
// kvm, or auto, the default: kvm where it can run, else qemu). Every sandbox a test
// creates uses it: through MustCreate(), or TestConfig() for a config of its own.
// $VESSEL_TEST_BOOT_TIMEOUT (seconds) replaces the default boot timeout in TestConfig(),
// for hosts where VMs boot slowly (nested virtualisation under emulation).
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "vessel/sandbox.h"

namespace vessel::testing {

// The engine this run tests, resolved: kQemu or kKvm.
EngineKind TestEngine();
// Its name for the CLI's --engine: "qemu" or "kvm".
const char* TestEngineName();
// A default config on the engine under test.
SandboxConfig TestConfig();

// The runtime root this test binary uses (a fresh temporary directory).
const std::string& TestRuntimeRoot();
// PIDs of VMM processes (QEMU or vessel-vmm) started under TestRuntimeRoot() that are
// still alive.
std::vector<int> LiveVmmProcesses();
// Entries left in TestRuntimeRoot().
std::vector<std::string> RuntimeLeftovers();

// Resident set of this process, in KiB.
long ResidentKib();

// No VMM process and no runtime file of this test binary is left.
inline void ExpectNothingLeft() {
  EXPECT_TRUE(LiveVmmProcesses().empty());
  EXPECT_TRUE(RuntimeLeftovers().empty());
}

// Creates a sandbox or fails the current test with the error. A config that leaves the
// engine on kAuto gets the engine under test.
std::unique_ptr<Sandbox> MustCreate(const SandboxConfig& config = TestConfig());

}  // namespace vessel::testing

// Skips the current test unless the engine under test is QEMU.
#define VESSEL_REQUIRE_QEMU()                                         \
  if (::vessel::testing::TestEngine() != ::vessel::EngineKind::kQemu) \
  GTEST_SKIP() << "this test is about the qemu engine; this run tests the kvm engine"
