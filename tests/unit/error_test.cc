#include "vessel/error.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <variant>

namespace vessel {
namespace {

TEST(ErrorTest, InvalidConfigNamesTheField) {
  Error e = Error::InvalidConfig("vcpus", "0 is outside 1..8");
  EXPECT_EQ(e.kind(), ErrorKind::kInvalidConfig);
  EXPECT_EQ(e.subject(), "vcpus");
  EXPECT_EQ(e.message(), "vcpus: 0 is outside 1..8");
  EXPECT_EQ(e.errno_value(), 0);
  EXPECT_EQ(e.lifecycle(), nullptr);
  EXPECT_EQ(e.ToString(), "invalid config: vcpus: 0 is outside 1..8");
}

TEST(ErrorTest, LifecycleKeepsTheVariant) {
  Error e = Error::Lifecycle(
      {LifecycleError::InvalidState{SandboxState::kReady, SandboxState::kFailed, "the VM broke"}});
  EXPECT_EQ(e.kind(), ErrorKind::kLifecycle);
  ASSERT_NE(e.lifecycle(), nullptr);
  const auto* state = e.lifecycle()->As<LifecycleError::InvalidState>();
  ASSERT_NE(state, nullptr);
  EXPECT_EQ(state->expected, SandboxState::kReady);
  EXPECT_EQ(state->current, SandboxState::kFailed);
  EXPECT_EQ(e.message(), "invalid state: expected ready, current failed: the VM broke");
  EXPECT_EQ(e.subject(), "");
  EXPECT_EQ(e.errno_value(), 0);
  EXPECT_EQ(e.ToString(), "lifecycle: invalid state: expected ready, current failed: the VM broke");
}

TEST(ErrorTest, Backend) {
  Error e = Error::Backend("the agent hung up");
  EXPECT_EQ(e.kind(), ErrorKind::kBackend);
  EXPECT_EQ(e.message(), "the agent hung up");
  EXPECT_EQ(e.subject(), "");
  EXPECT_EQ(e.errno_value(), 0);
  EXPECT_EQ(e.lifecycle(), nullptr);
  EXPECT_EQ(e.ToString(), "backend: the agent hung up");
}

TEST(ErrorTest, GuestFileNamesThePath) {
  Error e = Error::GuestFile("/no/such/dir", ENOENT, "No such file or directory");
  EXPECT_EQ(e.kind(), ErrorKind::kGuestFile);
  EXPECT_EQ(e.subject(), "/no/such/dir");
  EXPECT_EQ(e.message(), "/no/such/dir: No such file or directory");
  EXPECT_EQ(e.errno_value(), ENOENT);
  EXPECT_EQ(e.guest_file_kind(), GuestFileErrorKind::kNotFound);
  EXPECT_EQ(e.lifecycle(), nullptr);
  EXPECT_EQ(e.ToString(), "guest file: /no/such/dir: No such file or directory");
}

struct GuestErrnoCase {
  const char* name;
  int guest_errno;
  GuestFileErrorKind kind;
};

class GuestFileKindTest : public ::testing::TestWithParam<GuestErrnoCase> {};

TEST_P(GuestFileKindTest, DerivedFromTheGuestErrno) {
  const GuestErrnoCase& c = GetParam();
  Error e = Error::GuestFile("/p", c.guest_errno, "failed");
  EXPECT_EQ(e.kind(), ErrorKind::kGuestFile);
  EXPECT_EQ(e.errno_value(), c.guest_errno);
  ASSERT_TRUE(e.guest_file_kind().has_value());
  EXPECT_EQ(*e.guest_file_kind(), c.kind) << ToString(*e.guest_file_kind());
  // Context keeps the kind.
  Error wrapped = std::move(e).Context("copying");
  EXPECT_EQ(wrapped.guest_file_kind(), c.kind);
  EXPECT_EQ(wrapped.errno_value(), c.guest_errno);
}

INSTANTIATE_TEST_SUITE_P(
    Errnos, GuestFileKindTest,
    ::testing::Values(GuestErrnoCase{"ENOENT", ENOENT, GuestFileErrorKind::kNotFound},
                      GuestErrnoCase{"EACCES", EACCES, GuestFileErrorKind::kPermissionDenied},
                      GuestErrnoCase{"EPERM", EPERM, GuestFileErrorKind::kPermissionDenied},
                      GuestErrnoCase{"ENOSPC", ENOSPC, GuestFileErrorKind::kNoSpace},
                      GuestErrnoCase{"EDQUOT", EDQUOT, GuestFileErrorKind::kNoSpace},
                      GuestErrnoCase{"EISDIR", EISDIR, GuestFileErrorKind::kIsDirectory},
                      GuestErrnoCase{"ENOTDIR", ENOTDIR, GuestFileErrorKind::kNotDirectory},
                      GuestErrnoCase{"EEXIST", EEXIST, GuestFileErrorKind::kExists},
                      GuestErrnoCase{"ENOTEMPTY", ENOTEMPTY, GuestFileErrorKind::kNotEmpty},
                      GuestErrnoCase{"EIO", EIO, GuestFileErrorKind::kIo},
                      GuestErrnoCase{"Unknown", 4242, GuestFileErrorKind::kIo},
                      GuestErrnoCase{"None", 0, GuestFileErrorKind::kIo}),
    [](const ::testing::TestParamInfo<GuestErrnoCase>& param_info) {
      return std::string(param_info.param.name);
    });

TEST(ErrorTest, GuestFileKindIsSetForGuestFileErrorsOnly) {
  EXPECT_FALSE(Error::Backend("x").guest_file_kind().has_value());
  EXPECT_FALSE(Error::HostIo("open", ENOENT).guest_file_kind().has_value());
  EXPECT_FALSE(Error::InvalidConfig("path", "relative").guest_file_kind().has_value());
  EXPECT_FALSE(Error::Lifecycle({LifecycleError::NotReady{}}).guest_file_kind().has_value());
}

TEST(ErrorTest, GuestFileErrorKindNames) {
  EXPECT_EQ(ToString(GuestFileErrorKind::kNotFound), "not found");
  EXPECT_EQ(ToString(GuestFileErrorKind::kPermissionDenied), "permission denied");
  EXPECT_EQ(ToString(GuestFileErrorKind::kNoSpace), "out of space");
  EXPECT_EQ(ToString(GuestFileErrorKind::kIsDirectory), "is a directory");
  EXPECT_EQ(ToString(GuestFileErrorKind::kNotDirectory), "not a directory");
  EXPECT_EQ(ToString(GuestFileErrorKind::kExists), "already exists");
  EXPECT_EQ(ToString(GuestFileErrorKind::kNotEmpty), "directory not empty");
  EXPECT_EQ(ToString(GuestFileErrorKind::kIo), "I/O error");
}

TEST(ErrorTest, SnapshotFormat) {
  Error e = Error::SnapshotFormat("bad magic");
  EXPECT_EQ(e.kind(), ErrorKind::kSnapshotFormat);
  EXPECT_EQ(e.message(), "bad magic");
  EXPECT_EQ(e.subject(), "");
  EXPECT_EQ(e.errno_value(), 0);
  EXPECT_EQ(e.lifecycle(), nullptr);
  EXPECT_EQ(e.ToString(), "snapshot format: bad magic");
}

TEST(ErrorTest, HostIoKeepsErrno) {
  Error e = Error::HostIo("open /dev/kvm", ENOENT);
  EXPECT_EQ(e.kind(), ErrorKind::kHostIo);
  EXPECT_EQ(e.errno_value(), ENOENT);
  EXPECT_EQ(e.subject(), "");
  EXPECT_EQ(e.lifecycle(), nullptr);
  EXPECT_EQ(e.message(), std::string("open /dev/kvm: ") + std::strerror(ENOENT));
  EXPECT_EQ(e.ToString(), std::string("host I/O: open /dev/kvm: ") + std::strerror(ENOENT));
}

TEST(ErrorTest, UnsupportedPlatform) {
  Error e = Error::UnsupportedPlatform("qemu-system-x86_64 not found");
  EXPECT_EQ(e.kind(), ErrorKind::kUnsupportedPlatform);
  EXPECT_EQ(e.message(), "qemu-system-x86_64 not found");
  EXPECT_EQ(e.subject(), "");
  EXPECT_EQ(e.errno_value(), 0);
  EXPECT_EQ(e.lifecycle(), nullptr);
  EXPECT_EQ(e.ToString(), "unsupported platform: qemu-system-x86_64 not found");
}

TEST(ErrorTest, ContextPrefixesAndKeepsEverythingElse) {
  Error e = Error::HostIo("read vsock", EPIPE).Context("restoring vsock").Context("booting VM");
  EXPECT_EQ(e.kind(), ErrorKind::kHostIo);
  EXPECT_EQ(e.errno_value(), EPIPE);
  EXPECT_EQ(e.message(),
            std::string("booting VM: restoring vsock: read vsock: ") + std::strerror(EPIPE));
  EXPECT_EQ(e.ToString(), "host I/O: " + e.message());

  Error g = Error::GuestFile("/tmp/x", EACCES, "denied").Context("copying");
  EXPECT_EQ(g.subject(), "/tmp/x");
  EXPECT_EQ(g.message(), "copying: /tmp/x: denied");

  Error l = Error::Lifecycle({LifecycleError::VsockNotConnected{}}).Context("executing");
  ASSERT_NE(l.lifecycle(), nullptr);
  EXPECT_TRUE(l.lifecycle()->Is<LifecycleError::VsockNotConnected>());
  EXPECT_EQ(l.message(), "executing: vsock command channel not connected");
}

TEST(ErrorTest, ErrorKindNames) {
  EXPECT_EQ(ToString(ErrorKind::kInvalidConfig), "invalid config");
  EXPECT_EQ(ToString(ErrorKind::kLifecycle), "lifecycle");
  EXPECT_EQ(ToString(ErrorKind::kBackend), "backend");
  EXPECT_EQ(ToString(ErrorKind::kGuestFile), "guest file");
  EXPECT_EQ(ToString(ErrorKind::kSnapshotFormat), "snapshot format");
  EXPECT_EQ(ToString(ErrorKind::kHostIo), "host I/O");
  EXPECT_EQ(ToString(ErrorKind::kUnsupportedPlatform), "unsupported platform");
}

TEST(ErrorTest, TimeoutIsAStructuredRetryableBackendError) {
  Error e = Error::Timeout("waiting for the guest agent: timed out").Context("booting VM");
  EXPECT_EQ(e.kind(), ErrorKind::kBackend);
  EXPECT_TRUE(e.timed_out());
  EXPECT_TRUE(e.retryable());
  EXPECT_EQ(e.lifecycle(), nullptr);
  EXPECT_EQ(e.message(), "booting VM: waiting for the guest agent: timed out");
  // A backend failure that mentions a timeout in its text is not one.
  EXPECT_FALSE(Error::Backend("the agent said: timed out").timed_out());
}

TEST(ErrorTest, OnlyConditionsThatCanPassAreRetryable) {
  EXPECT_TRUE(Error::Lifecycle({LifecycleError::VsockNotConnected{}}).retryable());
  EXPECT_TRUE(Error::Timeout("read: timed out").retryable());
  EXPECT_FALSE(Error::Lifecycle({LifecycleError::VsockUnavailable{}}).retryable());
  EXPECT_FALSE(Error::Lifecycle({LifecycleError::Destroyed{"gone"}}).retryable());
  EXPECT_FALSE(Error::Lifecycle({LifecycleError::Released{"pooled"}}).retryable());
  EXPECT_FALSE(Error::InvalidConfig("vcpus", "0 is outside 1..8").retryable());
  EXPECT_FALSE(Error::Backend("the VM exited").retryable());
  EXPECT_FALSE(Error::HostIo("read", EIO).retryable());
  EXPECT_FALSE(Error::UnsupportedPlatform("no /dev/kvm").retryable());
  EXPECT_FALSE(Error::SnapshotFormat("truncated").retryable());
  EXPECT_FALSE(Error::GuestFile("/x", ENOENT, "no such file").retryable());
}

TEST(ErrorTest, DetailKeepsTheKindAndAppendsLines) {
  Error e = Error::HostIo("connect", ECONNREFUSED).Detail("vessel-vmm: log tail");
  EXPECT_EQ(e.kind(), ErrorKind::kHostIo);
  EXPECT_EQ(e.errno_value(), ECONNREFUSED);
  EXPECT_EQ(e.message(),
            std::string("connect: ") + std::strerror(ECONNREFUSED) + "\nvessel-vmm: log tail");
  EXPECT_TRUE(Error::Timeout("t").Detail("d").timed_out());
}

TEST(ErrorTest, SandboxStateNamesAreStable) {
  EXPECT_EQ(ToString(SandboxState::kReady), "ready");
  EXPECT_EQ(ToString(SandboxState::kFailed), "failed");
  EXPECT_EQ(ToString(SandboxState::kDestroyed), "destroyed");
}

// A new variant must get a case below.
static_assert(std::variant_size_v<LifecycleError::Variant> == 8);

struct LifecycleCase {
  const char* name;
  LifecycleError error;
  std::string text;
  bool retryable;
};

class LifecycleErrorTest : public ::testing::TestWithParam<LifecycleCase> {};

TEST_P(LifecycleErrorTest, ToStringAndRetryable) {
  const LifecycleCase& c = GetParam();
  EXPECT_EQ(c.error.ToString(), c.text);
  EXPECT_EQ(c.error.Retryable(), c.retryable);
  EXPECT_EQ(Error::Lifecycle(c.error).retryable(), c.retryable);
  // Wrapped in an Error, the variant and its text survive.
  Error e = Error::Lifecycle(c.error);
  ASSERT_NE(e.lifecycle(), nullptr);
  EXPECT_EQ(e.lifecycle()->variant.index(), c.error.variant.index());
  EXPECT_EQ(e.message(), c.text);
}

INSTANTIATE_TEST_SUITE_P(
    AllVariants, LifecycleErrorTest,
    ::testing::Values(
        LifecycleCase{
            "InvalidState",
            {LifecycleError::InvalidState{SandboxState::kReady, SandboxState::kFailed,
                                          "execute needs a ready sandbox"}},
            "invalid state: expected ready, current failed: execute needs a ready sandbox",
            false},
        LifecycleCase{"Destroyed",
                      {LifecycleError::Destroyed{"cannot execute"}},
                      "destroyed: cannot execute",
                      false},
        LifecycleCase{"Released",
                      {LifecycleError::Released{"back in the pool"}},
                      "released: back in the pool",
                      false},
        LifecycleCase{"NotReady", {LifecycleError::NotReady{}}, "not ready for a snapshot", false},
        LifecycleCase{
            "NotReadyForFork", {LifecycleError::NotReadyForFork{}}, "not ready for a fork", false},
        LifecycleCase{"VsockNotConnected",
                      {LifecycleError::VsockNotConnected{}},
                      "vsock command channel not connected",
                      true},
        LifecycleCase{"VsockUnavailable",
                      {LifecycleError::VsockUnavailable{}},
                      "vsock command channel not available",
                      false},
        LifecycleCase{"Other", {LifecycleError::Other{"something odd"}}, "something odd", false}),
    [](const ::testing::TestParamInfo<LifecycleCase>& param_info) {
      return std::string(param_info.param.name);
    });

TEST(LifecycleErrorAccessTest, IsAndAsAgree) {
  LifecycleError e{LifecycleError::Released{"gone"}};
  EXPECT_TRUE(e.Is<LifecycleError::Released>());
  EXPECT_FALSE(e.Is<LifecycleError::Destroyed>());
  ASSERT_NE(e.As<LifecycleError::Released>(), nullptr);
  EXPECT_EQ(e.As<LifecycleError::Released>()->message, "gone");
  EXPECT_EQ(e.As<LifecycleError::Destroyed>(), nullptr);
}

TEST(ResultTest, FailCarriesTheError) {
  auto f = []() -> Result<int> { return Fail(Error::Backend("nope")); };
  Result<int> r = f();
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().kind(), ErrorKind::kBackend);
  EXPECT_EQ(r.error().message(), "nope");
}

}  // namespace
}  // namespace vessel
