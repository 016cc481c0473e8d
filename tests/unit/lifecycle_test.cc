#include "sandbox/lifecycle.h"

#include <gtest/gtest.h>

#include <iterator>
#include <string>

namespace vessel::sandbox {
namespace {

enum class Expect { kAllowed, kInvalidState, kDestroyed, kNotReady, kNotReadyForFork };

struct Case {
  SandboxState state;
  Operation op;
  Expect expect;
};

// The whole lifecycle contract of vessel/sandbox.h, written out independently.
constexpr Case kExpected[] = {
    {SandboxState::kReady, Operation::kExecute, Expect::kAllowed},
    {SandboxState::kReady, Operation::kFiles, Expect::kAllowed},
    {SandboxState::kReady, Operation::kSnapshot, Expect::kAllowed},
    {SandboxState::kReady, Operation::kFork, Expect::kAllowed},
    {SandboxState::kReady, Operation::kDestroy, Expect::kAllowed},
    {SandboxState::kFailed, Operation::kExecute, Expect::kInvalidState},
    {SandboxState::kFailed, Operation::kFiles, Expect::kInvalidState},
    {SandboxState::kFailed, Operation::kSnapshot, Expect::kNotReady},
    {SandboxState::kFailed, Operation::kFork, Expect::kNotReadyForFork},
    {SandboxState::kFailed, Operation::kDestroy, Expect::kAllowed},
    {SandboxState::kDestroyed, Operation::kExecute, Expect::kDestroyed},
    {SandboxState::kDestroyed, Operation::kFiles, Expect::kDestroyed},
    {SandboxState::kDestroyed, Operation::kSnapshot, Expect::kDestroyed},
    {SandboxState::kDestroyed, Operation::kFork, Expect::kDestroyed},
    {SandboxState::kDestroyed, Operation::kDestroy, Expect::kDestroyed},
};

static_assert(std::size(kAllStates) == 3, "a new state needs rows in kExpected");
static_assert(std::size(kAllOperations) == 5, "a new operation needs rows in kExpected");

const Case* FindCase(SandboxState state, Operation op) {
  const Case* found = nullptr;
  for (const Case& c : kExpected) {
    if (c.state != state || c.op != op) continue;
    EXPECT_EQ(found, nullptr) << "duplicate expectation";
    found = &c;
  }
  return found;
}

std::string Describe(SandboxState state, Operation op) {
  return std::string(ToString(op)) + " in " + std::string(vessel::ToString(state));
}

TEST(LifecycleTest, EveryStateAndOperation) {
  size_t checked = 0;
  for (SandboxState state : kAllStates) {
    for (Operation op : kAllOperations) {
      SCOPED_TRACE(Describe(state, op));
      const Case* c = FindCase(state, op);
      ASSERT_NE(c, nullptr) << "no expectation written for this pair";
      std::optional<LifecycleError> error = Check(state, op);
      switch (c->expect) {
        case Expect::kAllowed: EXPECT_FALSE(error.has_value()) << error->ToString(); break;
        case Expect::kInvalidState: {
          ASSERT_TRUE(error.has_value());
          const auto* invalid = error->As<LifecycleError::InvalidState>();
          ASSERT_NE(invalid, nullptr) << "got: " << error->ToString();
          EXPECT_EQ(invalid->expected, SandboxState::kReady);
          EXPECT_EQ(invalid->current, state);
          EXPECT_NE(invalid->message.find(ToString(op)), std::string::npos) << invalid->message;
          EXPECT_NE(invalid->message.find(vessel::ToString(state)), std::string::npos)
              << invalid->message;
          EXPECT_FALSE(error->Retryable());
          break;
        }
        case Expect::kNotReady:
          ASSERT_TRUE(error.has_value());
          EXPECT_TRUE(error->Is<LifecycleError::NotReady>()) << error->ToString();
          EXPECT_FALSE(error->Retryable());
          break;
        case Expect::kNotReadyForFork:
          ASSERT_TRUE(error.has_value());
          EXPECT_TRUE(error->Is<LifecycleError::NotReadyForFork>()) << error->ToString();
          EXPECT_FALSE(error->Retryable());
          break;
        case Expect::kDestroyed: {
          ASSERT_TRUE(error.has_value());
          const auto* destroyed = error->As<LifecycleError::Destroyed>();
          ASSERT_NE(destroyed, nullptr) << "got: " << error->ToString();
          EXPECT_NE(destroyed->message.find(ToString(op)), std::string::npos) << destroyed->message;
          EXPECT_FALSE(error->Retryable());
          break;
        }
      }
      ++checked;
    }
  }
  EXPECT_EQ(checked, std::size(kExpected));
}

TEST(LifecycleTest, FilesInFailedIsInvalidStateExpectingReady) {
  auto error = Check(SandboxState::kFailed, Operation::kFiles);
  ASSERT_TRUE(error.has_value());
  EXPECT_EQ(error->ToString(),
            "invalid state: expected ready, current failed: access files needs a ready sandbox, "
            "this one is failed");
}

TEST(LifecycleTest, FilesInDestroyedIsDestroyed) {
  auto error = Check(SandboxState::kDestroyed, Operation::kFiles);
  ASSERT_TRUE(error.has_value());
  EXPECT_EQ(error->ToString(), "destroyed: cannot access files: the sandbox was destroyed");
}

TEST(LifecycleTest, DestroyedErrorsThroughError) {
  auto error = Check(SandboxState::kDestroyed, Operation::kDestroy);
  ASSERT_TRUE(error.has_value());
  Error e = Error::Lifecycle(*error);
  EXPECT_EQ(e.kind(), ErrorKind::kLifecycle);
  ASSERT_NE(e.lifecycle(), nullptr);
  EXPECT_TRUE(e.lifecycle()->Is<LifecycleError::Destroyed>());
  EXPECT_EQ(e.message(), "destroyed: cannot destroy: the sandbox was destroyed");
}

TEST(LifecycleTest, OperationNames) {
  EXPECT_EQ(ToString(Operation::kExecute), "execute");
  EXPECT_EQ(ToString(Operation::kFiles), "access files");
  EXPECT_EQ(ToString(Operation::kDestroy), "destroy");
}

TEST(LifecycleTest, EveryOperationIsListedOnce) {
  EXPECT_EQ(kAllOperations[0], Operation::kExecute);
  EXPECT_EQ(kAllOperations[1], Operation::kFiles);
  EXPECT_EQ(kAllOperations[2], Operation::kSnapshot);
  EXPECT_EQ(kAllOperations[3], Operation::kFork);
  EXPECT_EQ(kAllOperations[4], Operation::kDestroy);
}

TEST(LifecycleTest, UnknownOperationFailsClosed) {
  auto bogus = static_cast<Operation>(42);
  for (SandboxState state : kAllStates) {
    auto error = Check(state, bogus);
    ASSERT_TRUE(error.has_value());
    EXPECT_TRUE(error->Is<LifecycleError::Other>()) << error->ToString();
  }
}

TEST(LifecycleTest, UnknownStateFailsClosed) {
  // A value outside the enum (e.g. from memory corruption or a future state) is refused.
  auto bogus = static_cast<SandboxState>(42);
  for (Operation op : kAllOperations) {
    auto error = Check(bogus, op);
    ASSERT_TRUE(error.has_value());
    EXPECT_TRUE(error->Is<LifecycleError::Other>()) << error->ToString();
  }
}

}  // namespace
}  // namespace vessel::sandbox
