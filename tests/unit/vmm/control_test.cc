#include "vmm/control.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

namespace vessel::vmm {
namespace {

using nlohmann::json;

const char* kGoodConfigure =
    R"({"op":"configure","vcpus":2,"memory_mib":256,"kernel":"/k/vmlinux",)"
    R"("initramfs":"/k/initramfs.cpio","cmdline":"console=ttyS0 quiet",)"
    R"("console_log":"/run/vm/console.log","vsock":{"cid":3,"uds":"/run/vm/vsock.sock"},)"
    R"("agent_port":"/run/vm/agent.sock"})";

std::string ParseError(std::string_view message) {
  auto r = ParseRequest(message);
  EXPECT_FALSE(r) << message;
  return r ? std::string() : r.error().message();
}

// `key` replaced (or removed with nullptr) in the good configure request.
std::string ConfigureWith(const std::string& key, const json& value) {
  json j = json::parse(kGoodConfigure);
  if (value.is_null()) {
    j.erase(key);
  } else {
    j[key] = value;
  }
  return j.dump();
}

TEST(ParseRequest, ParsesEveryOp) {
  auto hello = ParseRequest(R"({"op":"hello","version":1})");
  ASSERT_TRUE(hello);
  EXPECT_EQ(std::get<request::Hello>(*hello).version, 1);
  for (const char* op : {"start", "pause", "resume", "status", "shutdown"}) {
    EXPECT_TRUE(ParseRequest(json{{"op", op}}.dump())) << op;
  }
  auto configure = ParseRequest(kGoodConfigure);
  ASSERT_TRUE(configure) << configure.error().ToString();
  const VmConfig& c = std::get<request::Configure>(*configure).config;
  EXPECT_EQ(c.vcpus, 2u);
  EXPECT_EQ(c.memory_mib, 256u);
  EXPECT_EQ(c.kernel, "/k/vmlinux");
  EXPECT_EQ(c.initramfs, "/k/initramfs.cpio");
  EXPECT_EQ(c.cmdline, "console=ttyS0 quiet");
  EXPECT_EQ(c.console_log, "/run/vm/console.log");
  ASSERT_TRUE(c.vsock);
  EXPECT_EQ(c.vsock->cid, 3u);
  EXPECT_EQ(c.vsock->uds, "/run/vm/vsock.sock");
  EXPECT_EQ(c.agent_port, "/run/vm/agent.sock");
}

TEST(ParseRequest, OptionalConfigureFieldsMayBeLeftOut) {
  json j = json::parse(kGoodConfigure);
  j.erase("initramfs");
  j.erase("vsock");
  j.erase("agent_port");
  j.erase("cmdline");
  auto r = ParseRequest(j.dump());
  ASSERT_TRUE(r) << r.error().ToString();
  const VmConfig& c = std::get<request::Configure>(*r).config;
  EXPECT_TRUE(c.initramfs.empty());
  EXPECT_FALSE(c.vsock);
  EXPECT_TRUE(c.agent_port.empty());
}

TEST(ParseRequest, RejectsMalformedMessages) {
  EXPECT_NE(ParseError("").find("empty"), std::string::npos);
  EXPECT_NE(ParseError(std::string(kMaxControlMessage + 1, ' ')).find("exceeds"),
            std::string::npos);
  EXPECT_NE(ParseError(R"({"op":"hel)").find("JSON"), std::string::npos);  // truncated
  EXPECT_NE(ParseError(R"({"op":"start"} trailing)").find("JSON"), std::string::npos);
  EXPECT_NE(ParseError("[1,2]").find("object"), std::string::npos);
  EXPECT_NE(ParseError("\"start\"").find("object"), std::string::npos);
  EXPECT_NE(ParseError("{}").find("op"), std::string::npos);
  EXPECT_NE(ParseError(R"({"op":7})").find("op"), std::string::npos);
  EXPECT_NE(ParseError(R"({"op":"reboot"})").find("unknown op"), std::string::npos);
  EXPECT_NE(ParseError(R"({"op":"start","now":true})").find("no fields"), std::string::npos);
  EXPECT_NE(ParseError(R"({"op":"hello"})").find("version"), std::string::npos);
  EXPECT_NE(ParseError(R"({"op":"hello","version":"1"})").find("version"), std::string::npos);
  EXPECT_NE(ParseError(R"({"op":"hello","version":1.5})").find("version"), std::string::npos);
  std::string bad_utf8 = "{\"op\":\"\xff\xfe\"}";
  ParseError(bad_utf8);
}

TEST(ParseRequest, ValidatesConfigureFields) {
  EXPECT_NE(ParseError(ConfigureWith("vcpus", nullptr)).find("\"vcpus\" is missing"),
            std::string::npos);
  EXPECT_NE(ParseError(ConfigureWith("vcpus", "2")).find("integer"), std::string::npos);
  EXPECT_NE(ParseError(ConfigureWith("vcpus", 1.5)).find("integer"), std::string::npos);
  EXPECT_NE(ParseError(ConfigureWith("vcpus", true)).find("integer"), std::string::npos);
  EXPECT_NE(ParseError(ConfigureWith("vcpus", 0)).find("between"), std::string::npos);
  EXPECT_NE(ParseError(ConfigureWith("vcpus", -1)).find("between"), std::string::npos);
  ParseError(ConfigureWith("vcpus", kMaxVcpus + 1));
  ParseError(ConfigureWith("memory_mib", kMinMemoryMib - 1));
  ParseError(ConfigureWith("memory_mib", kMaxMemoryMib + 1));
  ParseError(ConfigureWith("memory_mib", json::parse("1e30")));
  EXPECT_NE(ParseError(ConfigureWith("kernel", "vmlinux")).find("absolute"), std::string::npos);
  ParseError(ConfigureWith("kernel", ""));
  ParseError(ConfigureWith("kernel", 5));
  ParseError(ConfigureWith("kernel", nullptr));
  ParseError(ConfigureWith("console_log", nullptr));
  ParseError(ConfigureWith("initramfs", "relative.cpio"));
  ParseError(ConfigureWith("cmdline", std::string(kMaxCmdline + 1, 'a')));
  ParseError(ConfigureWith("cmdline", std::string("a\0b", 3)));
  ParseError(ConfigureWith("agent_port", "/" + std::string(kMaxSocketPath, 'a')));
  ParseError(ConfigureWith("vsock", "yes"));
  ParseError(ConfigureWith("vsock", json{{"cid", 2}, {"uds", "/v.sock"}}));
  ParseError(ConfigureWith("vsock", json{{"cid", 3}}));
  ParseError(ConfigureWith("vsock", json{{"cid", 3}, {"uds", "/v.sock"}, {"port", 1}}));
  ParseError(ConfigureWith("vsock", json{{"cid", 1ull << 32}, {"uds", "/v.sock"}}));
  EXPECT_NE(ParseError(ConfigureWith("memory", 256)).find("unknown field \"memory\""),
            std::string::npos);
}

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
