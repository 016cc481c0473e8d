// The engine <-> vessel-vmm control protocol: what one side encodes, the other decodes to
// the same value; malformed messages are refused with an error that says why.
#include "protocol/vmm_control.h"
#include "vmm_control_fixture.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace vessel::protocol::vmm_control {
namespace {

using nlohmann::json;

using vessel::testing::kGoodConfigure;

VmConfig FullConfig() {
  return {.vcpus = 2,
          .memory_mib = 256,
          .kernel = "/k/vmlinux",
          .initramfs = "/k/initramfs.cpio",
          .cmdline = "console=ttyS0 quiet -- \"a b\"",
          .console_log = "/run/vm/console.log",
          .vsock = VsockConfig{.cid = 3, .uds = "/run/vm/vsock.sock"},
          .agent_port = "/run/vm/agent.sock",
          .disk = "/images/root.erofs"};
}

VmConfig MinimalConfig() {
  return {.vcpus = kMaxVcpus,
          .memory_mib = kMaxMemoryMib,
          .kernel = "/vmlinux",
          .console_log = "/console.log"};
}

std::string DecodeError(std::string_view message) {
  auto r = DecodeRequest(message);
  EXPECT_FALSE(r) << message;
  if (r) return {};
  EXPECT_EQ(r.error().kind(), ErrorKind::kInvalidConfig);
  return r.error().message();
}

TEST(VmmControl, EveryRequestRoundTrips) {
  std::vector<Request> requests = {
      request::Hello{.version = kVersion},
      request::Configure{.config = FullConfig()},
      request::Configure{.config = MinimalConfig()},
      request::Start{},
      request::Pause{},
      request::Resume{},
      request::Status{},
      request::Shutdown{},
      request::Save{.memory = SaveMemory::kFreeze},
      request::Save{.memory = SaveMemory::kWrite},
      request::Restore{},
  };
  VmConfig shared = FullConfig();
  shared.memory = MemorySource::kShared;
  VmConfig saved = FullConfig();
  saved.memory = MemorySource::kPrivate;
  requests.emplace_back(request::Configure{.config = shared});
  requests.emplace_back(request::Configure{.config = saved});
  for (const Request& request : requests) {
    SCOPED_TRACE(OpName(request));
    auto message = EncodeRequest(request);
    ASSERT_TRUE(message) << message.error().ToString();
    EXPECT_LE(message->size(), kMaxMessage);
    EXPECT_NE(message->find(OpName(request)), std::string::npos) << *message;
    auto decoded = DecodeRequest(*message);
    ASSERT_TRUE(decoded) << decoded.error().ToString();
    EXPECT_EQ(*decoded, request);
  }
}

TEST(VmmControl, EveryReplyRoundTrips) {
  for (const Reply& reply : {Reply{}, Reply{.version = kVersion, .vmm = "vessel-vmm 0.1.0"},
                             Reply{.state = std::string(ToString(VmState::kGuestPanicked))},
                             Reply{.state = std::string(kUnconfiguredState)},
                             Reply::Failed("\"start\" is not allowed now: configure first"),
                             Reply::Failed(Error::SnapshotFormat("machine state: bad magic"))}) {
    auto decoded = DecodeReply(EncodeReply(reply));
    ASSERT_TRUE(decoded) << decoded.error().ToString();
    EXPECT_EQ(*decoded, reply);
  }
  EXPECT_EQ(Reply::Failed(Error::SnapshotFormat("x")).kind, kSnapshotFormatKind);
  EXPECT_TRUE(Reply::Failed(Error::Backend("x")).kind.empty());
  // A kind this host does not know is a plain failure.
  auto other = DecodeReply(R"({"ok":false,"error":"e","kind":"weird"})");
  ASSERT_TRUE(other);
  EXPECT_FALSE(other->ok);
  EXPECT_TRUE(other->kind.empty());
}

TEST(VmmControl, TheWireFormatIsTheDocumentedOne) {
  EXPECT_EQ(*EncodeRequest(request::Hello{.version = 1}), R"({"op":"hello","version":1})");
  EXPECT_EQ(*EncodeRequest(request::Status{}), R"({"op":"status"})");
  EXPECT_EQ(EncodeReply({}), R"({"ok":true})");
  EXPECT_EQ(EncodeReply(Reply::Failed("no")), R"({"error":"no","ok":false})");
  auto decoded = DecodeRequest(
      R"({"op":"configure","vcpus":1,"memory_mib":64,"kernel":"/k","console_log":"/c",)"
      R"("vsock":{"cid":3,"uds":"/v"}})");
  ASSERT_TRUE(decoded) << decoded.error().ToString();
  const VmConfig& c = std::get<request::Configure>(*decoded).config;
  EXPECT_EQ(c.vsock, (VsockConfig{.cid = 3, .uds = "/v"}));
  EXPECT_TRUE(c.initramfs.empty());
  EXPECT_TRUE(c.agent_port.empty());
  EXPECT_TRUE(c.disk.empty());
}

TEST(VmmControl, EncodingRefusesWhatCannotBeSent) {
  VmConfig huge = FullConfig();
  huge.cmdline = std::string(kMaxMessage, 'a');
  auto r = EncodeRequest(request::Configure{.config = huge});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind(), ErrorKind::kInvalidConfig);
  EXPECT_NE(r.error().message().find("64 KiB"), std::string::npos) << r.error().message();

  VmConfig not_utf8 = FullConfig();
  not_utf8.kernel = "/k/\xff";
  r = EncodeRequest(request::Configure{.config = not_utf8});
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("UTF-8"), std::string::npos) << r.error().message();
}

TEST(VmmControl, MalformedRequestsAreRefusedWithTheReason) {
  EXPECT_NE(DecodeError("").find("empty"), std::string::npos);
  EXPECT_NE(DecodeError(std::string(kMaxMessage + 1, ' ')).find("exceeds"), std::string::npos);
  EXPECT_NE(DecodeError(R"({"op":"hel)").find("JSON"), std::string::npos);
  EXPECT_NE(DecodeError("[1]").find("object"), std::string::npos);
  EXPECT_NE(DecodeError(R"({"op":7})").find("\"op\""), std::string::npos);
  EXPECT_NE(DecodeError(R"({"op":"reboot"})").find("unknown op \"reboot\""), std::string::npos);
  EXPECT_NE(DecodeError(R"({"op":"status","x":1})").find("takes no fields"), std::string::npos);
  EXPECT_NE(DecodeError(R"({"op":"hello","version":"1"})").find("\"version\""), std::string::npos);

  // A configure the engine could encode but the VMM must refuse: out of range.
  VmConfig too_many = FullConfig();
  too_many.vcpus = kMaxVcpus + 1;
  auto message = EncodeRequest(request::Configure{.config = too_many});
  ASSERT_TRUE(message);
  EXPECT_NE(DecodeError(*message).find("\"vcpus\" must be between 1 and 32"), std::string::npos);
  VmConfig relative = FullConfig();
  relative.kernel = "vmlinux";
  message = EncodeRequest(request::Configure{.config = relative});
  ASSERT_TRUE(message);
  EXPECT_NE(DecodeError(*message).find("\"kernel\" must be an absolute path"), std::string::npos);
}

TEST(VmmControl, MalformedRepliesAreRefusedWithTheReason) {
  for (std::string bad :
       {std::string("not json"), std::string("[1,2]"), std::string(R"({"state":"running"})"),
        std::string(R"({"ok":"yes"})"), std::string(R"({"ok":true,"version":"1"})"),
        std::string(R"({"ok":true,"state":7})"), std::string(kMaxMessage + 1, ' ')}) {
    auto r = DecodeReply(bad);
    ASSERT_FALSE(r) << bad;
    EXPECT_EQ(r.error().kind(), ErrorKind::kBackend);
    EXPECT_NE(r.error().message().find("malformed control reply"), std::string::npos)
        << r.error().message();
  }
  // An error reply without its text still decodes as a failure; unknown fields are ignored.
  auto bare = DecodeReply(R"({"ok":false})");
  ASSERT_TRUE(bare);
  EXPECT_FALSE(bare->ok);
  EXPECT_EQ(bare->error, "failed");
  auto newer = DecodeReply(R"({"ok":true,"state":"running","uptime_ms":5})");
  ASSERT_TRUE(newer);
  EXPECT_EQ(newer->state, "running");
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

TEST(DecodeRequest, ParsesEveryOp) {
  auto hello = DecodeRequest(R"({"op":"hello","version":1})");
  ASSERT_TRUE(hello);
  EXPECT_EQ(std::get<request::Hello>(*hello).version, 1);
  for (const char* op : {"start", "pause", "resume", "status", "shutdown"}) {
    EXPECT_TRUE(DecodeRequest(json{{"op", op}}.dump())) << op;
  }
  auto configure = DecodeRequest(kGoodConfigure);
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
  EXPECT_EQ(c.disk, "/images/root.erofs");
}

TEST(DecodeRequest, OptionalConfigureFieldsMayBeLeftOut) {
  json j = json::parse(kGoodConfigure);
  j.erase("initramfs");
  j.erase("vsock");
  j.erase("agent_port");
  j.erase("cmdline");
  j.erase("disk");
  auto r = DecodeRequest(j.dump());
  ASSERT_TRUE(r) << r.error().ToString();
  const VmConfig& c = std::get<request::Configure>(*r).config;
  EXPECT_TRUE(c.initramfs.empty());
  EXPECT_FALSE(c.vsock);
  EXPECT_TRUE(c.agent_port.empty());
  EXPECT_TRUE(c.disk.empty());
}

TEST(DecodeRequest, RejectsMalformedMessages) {
  EXPECT_NE(DecodeError("").find("empty"), std::string::npos);
  EXPECT_NE(DecodeError(std::string(kMaxMessage + 1, ' ')).find("exceeds"), std::string::npos);
  EXPECT_NE(DecodeError(R"({"op":"hel)").find("JSON"), std::string::npos);  // truncated
  EXPECT_NE(DecodeError(R"({"op":"start"} trailing)").find("JSON"), std::string::npos);
  EXPECT_NE(DecodeError("[1,2]").find("object"), std::string::npos);
  EXPECT_NE(DecodeError("\"start\"").find("object"), std::string::npos);
  EXPECT_NE(DecodeError("{}").find("op"), std::string::npos);
  EXPECT_NE(DecodeError(R"({"op":7})").find("op"), std::string::npos);
  EXPECT_NE(DecodeError(R"({"op":"reboot"})").find("unknown op"), std::string::npos);
  EXPECT_NE(DecodeError(R"({"op":"start","now":true})").find("no fields"), std::string::npos);
  EXPECT_NE(DecodeError(R"({"op":"hello"})").find("version"), std::string::npos);
  EXPECT_NE(DecodeError(R"({"op":"hello","version":"1"})").find("version"), std::string::npos);
  EXPECT_NE(DecodeError(R"({"op":"hello","version":1.5})").find("version"), std::string::npos);
  std::string bad_utf8 = "{\"op\":\"\xff\xfe\"}";
  DecodeError(bad_utf8);
}

TEST(DecodeRequest, ValidatesConfigureFields) {
  EXPECT_NE(DecodeError(ConfigureWith("vcpus", nullptr)).find("\"vcpus\" is missing"),
            std::string::npos);
  EXPECT_NE(DecodeError(ConfigureWith("vcpus", "2")).find("integer"), std::string::npos);
  EXPECT_NE(DecodeError(ConfigureWith("vcpus", 1.5)).find("integer"), std::string::npos);
  EXPECT_NE(DecodeError(ConfigureWith("vcpus", true)).find("integer"), std::string::npos);
  EXPECT_NE(DecodeError(ConfigureWith("vcpus", 0)).find("between"), std::string::npos);
  EXPECT_NE(DecodeError(ConfigureWith("vcpus", -1)).find("between"), std::string::npos);
  DecodeError(ConfigureWith("vcpus", kMaxVcpus + 1));
  DecodeError(ConfigureWith("memory_mib", kMinMemoryMib - 1));
  DecodeError(ConfigureWith("memory_mib", kMaxMemoryMib + 1));
  DecodeError(ConfigureWith("memory_mib", json::parse("1e30")));
  EXPECT_NE(DecodeError(ConfigureWith("kernel", "vmlinux")).find("absolute"), std::string::npos);
  DecodeError(ConfigureWith("kernel", ""));
  DecodeError(ConfigureWith("kernel", 5));
  DecodeError(ConfigureWith("kernel", nullptr));
  DecodeError(ConfigureWith("console_log", nullptr));
  DecodeError(ConfigureWith("initramfs", "relative.cpio"));
  DecodeError(ConfigureWith("cmdline", std::string(kMaxCmdline + 1, 'a')));
  DecodeError(ConfigureWith("cmdline", std::string("a\0b", 3)));
  DecodeError(ConfigureWith("agent_port", "/" + std::string(kMaxSocketPath, 'a')));
  DecodeError(ConfigureWith("vsock", "yes"));
  DecodeError(ConfigureWith("vsock", json{{"cid", 2}, {"uds", "/v.sock"}}));
  DecodeError(ConfigureWith("vsock", json{{"cid", 3}}));
  DecodeError(ConfigureWith("vsock", json{{"cid", 3}, {"uds", "/v.sock"}, {"port", 1}}));
  DecodeError(ConfigureWith("vsock", json{{"cid", 1ull << 32}, {"uds", "/v.sock"}}));
  EXPECT_NE(DecodeError(ConfigureWith("memory_size", 256)).find("unknown field \"memory_size\""),
            std::string::npos);
}

TEST(DecodeRequest, ValidatesTheDiskPath) {
  auto good = DecodeRequest(ConfigureWith("disk", "/" + std::string(kMaxPath - 1, 'd')));
  ASSERT_TRUE(good) << good.error().ToString();
  EXPECT_EQ(std::get<request::Configure>(*good).config.disk.size(), kMaxPath);
  EXPECT_NE(DecodeError(ConfigureWith("disk", "/" + std::string(kMaxPath, 'd')))
                .find("\"disk\" is longer than 4096 bytes"),
            std::string::npos);
  EXPECT_NE(DecodeError(ConfigureWith("disk", 7)).find("\"disk\" must be a string"),
            std::string::npos);
  EXPECT_NE(DecodeError(ConfigureWith("disk", json::array({"/a"}))).find("must be a string"),
            std::string::npos);
  EXPECT_NE(DecodeError(ConfigureWith("disk", "root.erofs")).find("\"disk\" must be an absolute"),
            std::string::npos);
  EXPECT_NE(DecodeError(ConfigureWith("disk", std::string("/a\0b", 4))).find("NUL"),
            std::string::npos);
  // An empty path is no disk, as when the field is left out.
  auto empty = DecodeRequest(ConfigureWith("disk", ""));
  ASSERT_TRUE(empty) << empty.error().ToString();
  EXPECT_TRUE(std::get<request::Configure>(*empty).config.disk.empty());
}

TEST(VmmControl, TheDiskRoundTripsAndIsLeftOutWhenEmpty) {
  VmConfig with_disk = MinimalConfig();
  with_disk.disk = "/var/lib/vessel/images/" + std::string(64, 'f') + ".erofs";
  auto message = EncodeRequest(request::Configure{.config = with_disk});
  ASSERT_TRUE(message) << message.error().ToString();
  EXPECT_NE(message->find(R"("disk":"/var/lib/vessel/images/)"), std::string::npos) << *message;
  auto decoded = DecodeRequest(*message);
  ASSERT_TRUE(decoded) << decoded.error().ToString();
  EXPECT_EQ(std::get<request::Configure>(*decoded).config, with_disk);

  message = EncodeRequest(request::Configure{.config = MinimalConfig()});
  ASSERT_TRUE(message);
  EXPECT_EQ(message->find("disk"), std::string::npos) << *message;
}

TEST(VmmControl, RequestsSayWhichDescriptorsComeWithThem) {
  EXPECT_EQ(DescriptorCount(request::Configure{.config = FullConfig()}), 0u);
  VmConfig shared = FullConfig();
  shared.memory = MemorySource::kShared;
  EXPECT_EQ(DescriptorCount(request::Configure{.config = shared}), 1u);
  VmConfig saved = FullConfig();
  saved.memory = MemorySource::kPrivate;
  EXPECT_EQ(DescriptorCount(request::Configure{.config = saved}), 1u);
  EXPECT_EQ(DescriptorCount(request::Save{.memory = SaveMemory::kFreeze}), 1u);
  EXPECT_EQ(DescriptorCount(request::Save{.memory = SaveMemory::kWrite}), 2u);
  EXPECT_EQ(DescriptorCount(request::Restore{}), 1u);
  for (const Request& request : {Request(request::Start{}), Request(request::Pause{}),
                                 Request(request::Status{}), Request(request::Shutdown{})}) {
    EXPECT_EQ(DescriptorCount(request), 0u) << OpName(request);
  }
  EXPECT_LE(DescriptorCount(request::Save{.memory = SaveMemory::kWrite}), kMaxDescriptors);
}

TEST(DecodeRequest, SaveAndRestoreAreValidated) {
  EXPECT_NE(DecodeError(R"({"op":"save"})").find("\"memory\" must be"), std::string::npos);
  EXPECT_NE(DecodeError(R"({"op":"save","memory":"all"})").find("\"memory\" must be"),
            std::string::npos);
  EXPECT_NE(DecodeError(R"({"op":"save","memory":1})").find("\"memory\" must be"),
            std::string::npos);
  EXPECT_NE(DecodeError(R"({"op":"save","memory":"write","to":"/x"})").find("unknown field"),
            std::string::npos);
  EXPECT_NE(DecodeError(R"({"op":"restore","state":"/x"})").find("takes no fields"),
            std::string::npos);
  json configure = json::parse(kGoodConfigure);
  configure["memory"] = "anonymous";
  EXPECT_NE(DecodeError(configure.dump()).find("\"memory\" must be"), std::string::npos);
  configure["memory"] = true;
  EXPECT_NE(DecodeError(configure.dump()).find("\"memory\" must be"), std::string::npos);
}

}  // namespace
}  // namespace vessel::protocol::vmm_control
