#include "sandbox/raw_agent.h"

#include "sandbox/sandbox_impl.h"

namespace vessel::sandbox {
namespace {

class SandboxRawAgent final : public RawAgent {
 public:
  explicit SandboxRawAgent(Sandbox& sandbox) : sandbox_(sandbox) {}

  std::string version() const override { return sandbox_.agent_version(); }
  Result<std::shared_ptr<Connection>> Begin(Operation op) override {
    if (op != Operation::kExecute && op != Operation::kFiles) {
      return Fail(Error::InvalidConfig("operation", "only requests to the agent are relayed"));
    }
    return Sandbox::Impl::Of(sandbox_).Begin(op);
  }

 private:
  Sandbox& sandbox_;
};

}  // namespace

std::unique_ptr<RawAgent> RawAgentOf(Sandbox& sandbox) {
  return std::make_unique<SandboxRawAgent>(sandbox);
}

}  // namespace vessel::sandbox
