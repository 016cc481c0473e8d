#include "vmm/control.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "vmm_control_fixture.h"

namespace vessel::vmm {
namespace {

using nlohmann::json;

using vessel::testing::kGoodConfigure;

class FakeVm : public VmController {
 public:
  Result<void> Configure(const VmConfig& config, UniqueFd memory_file) override {
    ++configures;
    if (fail_configure) return Fail(Error::InvalidConfig("kernel", "no such file"));
    vcpus = config.vcpus;
    memory_given = static_cast<bool>(memory_file);
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
  Result<void> Save(SaveMemory memory, int state_file, int memory_file) override {
    saves.push_back({memory, state_file >= 0, memory_file >= 0});
    return {};
  }
  Result<void> Restore(int state_file) override {
    if (state_file < 0) return Fail(Error::Backend("no state"));
    if (fail_restore) return Fail(Error::SnapshotFormat("machine state: bad magic"));
    state_ = VmState::kRunning;
    return {};
  }
  VmState state() const override { return state_; }

  struct SaveCall {
    SaveMemory memory;
    bool state_open;
    bool memory_open;
  };
  std::vector<SaveCall> saves;
  bool memory_given = false;
  bool fail_restore = false;
  bool fail_configure = false;
  int configures = 0;
  uint32_t vcpus = 0;
  VmState state_ = VmState::kConfigured;
};

json Reply(ControlSession& session, std::string_view message, std::vector<UniqueFd> fds = {}) {
  json j = json::parse(session.Handle(message, std::move(fds)), nullptr, false);
  EXPECT_TRUE(j.is_object());
  return j;
}

// `count` open descriptors (of /dev/null).
std::vector<UniqueFd> Descriptors(size_t count) {
  std::vector<UniqueFd> fds;
  for (size_t i = 0; i < count; ++i) fds.emplace_back(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  return fds;
}

std::string ErrorText(const json& reply) { return reply.value("error", std::string()); }

// kGoodConfigure on a saved VM's memory.
std::string SavedConfigure() {
  json j = json::parse(vessel::testing::kGoodConfigure);
  j["memory"] = "private";
  return j.dump();
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

TEST(ControlSession, ASavedVmIsRestoredOnceAndNeverStarted) {
  FakeVm vm;
  ControlSession session(vm);
  ASSERT_TRUE(Ok(Reply(session, R"({"op":"hello","version":1})")));
  EXPECT_FALSE(Ok(Reply(session, R"({"op":"restore"})", Descriptors(1))));
  ASSERT_TRUE(Ok(Reply(session, SavedConfigure(), Descriptors(1))));
  EXPECT_TRUE(vm.memory_given);
  json start = Reply(session, R"({"op":"start"})");
  EXPECT_FALSE(Ok(start));
  EXPECT_NE(ErrorText(start).find("restore it"), std::string::npos) << ErrorText(start);
  EXPECT_FALSE(Ok(Reply(session, R"({"op":"save","memory":"write"})", Descriptors(2))));
  ASSERT_TRUE(Ok(Reply(session, R"({"op":"restore"})", Descriptors(1))));
  EXPECT_EQ(Reply(session, R"({"op":"status"})")["state"], "running");
  EXPECT_FALSE(Ok(Reply(session, R"({"op":"restore"})", Descriptors(1))));
  EXPECT_FALSE(Ok(Reply(session, R"({"op":"start"})")));
}

TEST(ControlSession, AStateTheVmCannotLoadSaysSo) {
  FakeVm vm;
  vm.fail_restore = true;
  ControlSession session(vm);
  ASSERT_TRUE(Ok(Reply(session, R"({"op":"hello","version":1})")));
  ASSERT_TRUE(Ok(Reply(session, SavedConfigure(), Descriptors(1))));
  json r = Reply(session, R"({"op":"restore"})", Descriptors(1));
  EXPECT_FALSE(Ok(r));
  EXPECT_EQ(r["kind"], "snapshot_format");
  EXPECT_NE(ErrorText(r).find("bad magic"), std::string::npos);
  json other = Reply(session, R"({"op":"start"})");
  EXPECT_FALSE(Ok(other));
  EXPECT_FALSE(other.contains("kind")) << other.dump();
}

TEST(ControlSession, SaveComesWithItsFiles) {
  FakeVm vm;
  ControlSession session(vm);
  ASSERT_TRUE(Ok(Reply(session, R"({"op":"hello","version":1})")));
  ASSERT_TRUE(Ok(Reply(session, kGoodConfigure)));
  EXPECT_FALSE(vm.memory_given);
  EXPECT_FALSE(Ok(Reply(session, R"({"op":"save","memory":"freeze"})", Descriptors(1))));
  ASSERT_TRUE(Ok(Reply(session, R"({"op":"start"})")));
  ASSERT_TRUE(Ok(Reply(session, R"({"op":"save","memory":"freeze"})", Descriptors(1))));
  ASSERT_TRUE(Ok(Reply(session, R"({"op":"save","memory":"write"})", Descriptors(2))));
  ASSERT_EQ(vm.saves.size(), 2u);
  EXPECT_EQ(vm.saves[0].memory, SaveMemory::kFreeze);
  EXPECT_TRUE(vm.saves[0].state_open);
  EXPECT_FALSE(vm.saves[0].memory_open);
  EXPECT_EQ(vm.saves[1].memory, SaveMemory::kWrite);
  EXPECT_TRUE(vm.saves[1].memory_open);
}

TEST(ControlSession, RequestsWithOtherDescriptorsThanTheyTakeAreRefusedAndTheDescriptorsClosed) {
  FakeVm vm;
  ControlSession session(vm);
  ASSERT_TRUE(Ok(Reply(session, R"({"op":"hello","version":1})")));
  int pipe_fds[2];
  ASSERT_EQ(::pipe2(pipe_fds, O_CLOEXEC), 0);
  UniqueFd read_end(pipe_fds[0]);
  std::vector<UniqueFd> stray;
  stray.emplace_back(pipe_fds[1]);
  json r = Reply(session, R"({"op":"status"})", std::move(stray));
  EXPECT_FALSE(Ok(r));
  EXPECT_NE(ErrorText(r).find("takes 0 descriptors, not 1"), std::string::npos) << ErrorText(r);
  char byte;
  EXPECT_EQ(::read(read_end.get(), &byte, 1), 0) << "the descriptor that came was kept open";

  EXPECT_FALSE(Ok(Reply(session, kGoodConfigure, Descriptors(1))));
  EXPECT_FALSE(Ok(Reply(session, SavedConfigure())));
  EXPECT_FALSE(Ok(Reply(session, SavedConfigure(), Descriptors(2))));
  EXPECT_EQ(vm.configures, 0);
  ASSERT_TRUE(Ok(Reply(session, kGoodConfigure)));
  ASSERT_TRUE(Ok(Reply(session, R"({"op":"start"})")));
  EXPECT_FALSE(Ok(Reply(session, R"({"op":"save","memory":"write"})", Descriptors(1))));
  EXPECT_FALSE(Ok(Reply(session, R"({"op":"save","memory":"freeze"})", Descriptors(2))));
  EXPECT_FALSE(Ok(Reply(session, R"({"op":"save"})", Descriptors(2))));
  EXPECT_FALSE(Ok(Reply(session, R"({"op":"save","memory":"all"})", Descriptors(2))));
  EXPECT_TRUE(vm.saves.empty());
}

TEST(ControlSession, ShutdownIsAcceptedInAnyPhase) {
  FakeVm vm;
  ControlSession session(vm);
  EXPECT_TRUE(Ok(Reply(session, R"({"op":"shutdown"})")));
  EXPECT_TRUE(session.shutdown_requested());
}

}  // namespace
}  // namespace vessel::vmm
