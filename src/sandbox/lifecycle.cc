#include "sandbox/lifecycle.h"

#include <fmt/format.h>

namespace vessel::sandbox {
namespace {

enum class Verdict {
  kAllowed,
  kNeedsReady,  // InvalidState{expected: kReady}
  kDestroyed,   // Destroyed
  kNotReady,    // NotReady (snapshot)
  kNotReadyForFork,
};

struct Rule {
  SandboxState state;
  Operation op;
  Verdict verdict;
};

// Every (state, operation) pair appears exactly once; a unit test checks that.
constexpr Rule kRules[] = {
    {SandboxState::kReady, Operation::kExecute, Verdict::kAllowed},
    {SandboxState::kReady, Operation::kFiles, Verdict::kAllowed},
    {SandboxState::kReady, Operation::kSnapshot, Verdict::kAllowed},
    {SandboxState::kReady, Operation::kFork, Verdict::kAllowed},
    {SandboxState::kReady, Operation::kDestroy, Verdict::kAllowed},
    {SandboxState::kFailed, Operation::kExecute, Verdict::kNeedsReady},
    {SandboxState::kFailed, Operation::kFiles, Verdict::kNeedsReady},
    {SandboxState::kFailed, Operation::kSnapshot, Verdict::kNotReady},
    {SandboxState::kFailed, Operation::kFork, Verdict::kNotReadyForFork},
    {SandboxState::kFailed, Operation::kDestroy, Verdict::kAllowed},
    {SandboxState::kDestroyed, Operation::kExecute, Verdict::kDestroyed},
    {SandboxState::kDestroyed, Operation::kFiles, Verdict::kDestroyed},
    {SandboxState::kDestroyed, Operation::kSnapshot, Verdict::kDestroyed},
    {SandboxState::kDestroyed, Operation::kFork, Verdict::kDestroyed},
    {SandboxState::kDestroyed, Operation::kDestroy, Verdict::kDestroyed},
};

}  // namespace

std::string_view ToString(Operation op) {
  switch (op) {
    case Operation::kExecute: return "execute";
    case Operation::kFiles: return "access files";
    case Operation::kSnapshot: return "snapshot";
    case Operation::kFork: return "fork";
    case Operation::kDestroy: return "destroy";
  }
  return "unknown";
}

std::optional<LifecycleError> Check(SandboxState state, Operation op) {
  for (const Rule& rule : kRules) {
    if (rule.state != state || rule.op != op) continue;
    switch (rule.verdict) {
      case Verdict::kAllowed: return std::nullopt;
      case Verdict::kNeedsReady:
        return LifecycleError{
            LifecycleError::InvalidState{SandboxState::kReady, state,
                                         fmt::format("{} needs a ready sandbox, this one is {}",
                                                     ToString(op), vessel::ToString(state))}};
      case Verdict::kNotReady: return LifecycleError{LifecycleError::NotReady{}};
      case Verdict::kNotReadyForFork: return LifecycleError{LifecycleError::NotReadyForFork{}};
      case Verdict::kDestroyed:
        return LifecycleError{LifecycleError::Destroyed{
            fmt::format("cannot {}: the sandbox was destroyed", ToString(op))}};
    }
  }
  return LifecycleError{LifecycleError::Other{
      fmt::format("no lifecycle rule for {} in state {}", ToString(op), vessel::ToString(state))}};
}

}  // namespace vessel::sandbox
