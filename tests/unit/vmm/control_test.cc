#include "vmm/control.h"
#include "vmm_control_fixture.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

namespace vessel::vmm {
namespace {

using nlohmann::json;

using vessel::testing::kGoodConfigure;

class FakeVm : public VmController {
 public:
  Result<void> Configure(const VmConfig& config) override {
    ++configures;
    if (fail_configure) return Fail(Error::InvalidConfig("kernel", "no such file"));
    vcpus = config.vcpus;
    state_ = VmState::kConfigured;
    return {};
  }
  Result<void> Start() override {
    state_ = VmState::kRunning;
    return {};
  }
  Result<void> Pause() override {
    if (state_ != VmState::kRunning) return Fail(Error::Backend("not running"));
    state_ = VmState::kPaused;
    return {};
  }
  Result<void> Resume() override {
    state_ = VmState::kRunning;
    return {};
  }
  VmState state() const override { return state_; }

  bool fail_configure = false;
  int configures = 0;
  uint32_t vcpus = 0;
  VmState state_ = VmState::kConfigured;
};

json Reply(ControlSession& session, std::string_view message) {
  json j = json::parse(session.Handle(message), nullptr, false);
  EXPECT_TRUE(j.is_object());
  return j;
}

bool Ok(const json& reply) { return reply.value("ok", false); }

TEST(ControlSession, TheNormalSequence) {
  FakeVm vm;
  ControlSession session(vm);
  json hello = Reply(session, R"({"op":"hello","version":1})");
  EXPECT_TRUE(Ok(hello));
  EXPECT_EQ(hello["version"], 1);
  EXPECT_EQ(hello["vmm"], "vessel-vmm 0.1.0");
  EXPECT_EQ(Reply(session, R"({"op":"status"})")["state"], "unconfigured");
  EXPECT_TRUE(Ok(Reply(session, kGoodConfigure)));
  EXPECT_EQ(vm.vcpus, 2u);
  EXPECT_EQ(Reply(session, R"({"op":"status"})")["state"], "configured");
  EXPECT_TRUE(Ok(Reply(session, R"({"op":"start"})")));
  EXPECT_EQ(Reply(session, R"({"op":"status"})")["state"], "running");
  EXPECT_TRUE(Ok(Reply(session, R"({"op":"pause"})")));
  EXPECT_EQ(Reply(session, R"({"op":"status"})")["state"], "paused");
  EXPECT_TRUE(Ok(Reply(session, R"({"op":"resume"})")));
  EXPECT_FALSE(session.shutdown_requested());
  EXPECT_TRUE(Ok(Reply(session, R"({"op":"shutdown"})")));
  EXPECT_TRUE(session.shutdown_requested());
}

TEST(ControlSession, HelloComesFirstAndOnlyOnce) {
  FakeVm vm;
  ControlSession session(vm);
  json r = Reply(session, R"({"op":"status"})");
  EXPECT_FALSE(Ok(r));
  EXPECT_NE(r["error"].get<std::string>().find("hello"), std::string::npos);
  EXPECT_FALSE(Ok(Reply(session, kGoodConfigure)));
  EXPECT_EQ(vm.configures, 0);
  EXPECT_TRUE(Ok(Reply(session, R"({"op":"hello","version":1})")));
  EXPECT_FALSE(Ok(Reply(session, R"({"op":"hello","version":1})")));
}

TEST(ControlSession, VersionMismatchIsAnErrorReply) {
  FakeVm vm;
  ControlSession session(vm);
  json r = Reply(session, R"({"op":"hello","version":2})");
  EXPECT_FALSE(Ok(r));
  EXPECT_NE(r["error"].get<std::string>().find("version 2"), std::string::npos);
  EXPECT_TRUE(Ok(Reply(session, R"({"op":"hello","version":1})")));  // may try again
}

TEST(ControlSession, WrongOrderIsRefused) {
  FakeVm vm;
  ControlSession session(vm);
  ASSERT_TRUE(Ok(Reply(session, R"({"op":"hello","version":1})")));
  EXPECT_FALSE(Ok(Reply(session, R"({"op":"start"})")));
  EXPECT_FALSE(Ok(Reply(session, R"({"op":"pause"})")));
  EXPECT_FALSE(Ok(Reply(session, R"({"op":"resume"})")));
  ASSERT_TRUE(Ok(Reply(session, kGoodConfigure)));
  json twice = Reply(session, kGoodConfigure);
  EXPECT_FALSE(Ok(twice));
  EXPECT_NE(twice["error"].get<std::string>().find("already configured"), std::string::npos);
  EXPECT_EQ(vm.configures, 1);
  EXPECT_FALSE(Ok(Reply(session, R"({"op":"pause"})")));
  ASSERT_TRUE(Ok(Reply(session, R"({"op":"start"})")));
  EXPECT_FALSE(Ok(Reply(session, R"({"op":"start"})")));
}

TEST(ControlSession, FailedConfigureMayBeRetried) {
  FakeVm vm;
  vm.fail_configure = true;
  ControlSession session(vm);
  ASSERT_TRUE(Ok(Reply(session, R"({"op":"hello","version":1})")));
  json r = Reply(session, kGoodConfigure);
  EXPECT_FALSE(Ok(r));
  EXPECT_NE(r["error"].get<std::string>().find("no such file"), std::string::npos);
  vm.fail_configure = false;
  EXPECT_TRUE(Ok(Reply(session, kGoodConfigure)));
}

TEST(ControlSession, BadInputNeverBreaksTheSession) {
  FakeVm vm;
  ControlSession session(vm);
  ASSERT_TRUE(Ok(Reply(session, R"({"op":"hello","version":1})")));
  for (std::string_view bad :
       {std::string_view(""), std::string_view("{"), std::string_view("null"),
        std::string_view("{\"op\":\"\xff\"}"), std::string_view("{\"op\":\"x\xff\"}")}) {
    json r = Reply(session, bad);
    EXPECT_FALSE(Ok(r));
    EXPECT_TRUE(r["error"].is_string());
  }
  EXPECT_TRUE(Ok(Reply(session, kGoodConfigure)));
}

TEST(ControlSession, ShutdownIsAcceptedInAnyPhase) {
  FakeVm vm;
  ControlSession session(vm);
  EXPECT_TRUE(Ok(Reply(session, R"({"op":"shutdown"})")));
  EXPECT_TRUE(session.shutdown_requested());
}

}  // namespace
}  // namespace vessel::vmm
