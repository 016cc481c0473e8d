#include "vmm/control.h"

#include <fmt/format.h>

namespace vessel::vmm {

namespace request = protocol::vmm_control::request;
using protocol::vmm_control::Reply;

std::string ControlSession::Handle(std::string_view message) {
  auto request = protocol::vmm_control::DecodeRequest(message);
  if (!request) return EncodeReply(Reply::Failed(request.error().message()));
  return EncodeReply(Dispatch(*request));
}

Reply ControlSession::Dispatch(const Request& request) {
  auto out_of_order = [](std::string_view op, std::string_view expected) {
    return Reply::Failed(fmt::format("\"{}\" is not allowed now: {}", op, expected));
  };
  auto reply = [](const Result<void>& r) {
    return r ? Reply{} : Reply::Failed(r.error().message());
  };

  if (const auto* hello = std::get_if<request::Hello>(&request)) {
    if (phase_ != Phase::kAwaitingHello) return out_of_order("hello", "hello was already sent");
    if (hello->version != protocol::vmm_control::kVersion) {
      return Reply::Failed(fmt::format("protocol version {} is not supported; this VMM speaks {}",
                                       hello->version, protocol::vmm_control::kVersion));
    }
    phase_ = Phase::kAwaitingConfigure;
    return {.version = protocol::vmm_control::kVersion, .vmm = std::string(kVmmVersion)};
  }
  if (std::holds_alternative<request::Shutdown>(request)) {
    shutdown_requested_ = true;
    return {};
  }
  if (phase_ == Phase::kAwaitingHello) return out_of_order("request", "send hello first");

  if (const auto* configure = std::get_if<request::Configure>(&request)) {
    if (phase_ != Phase::kAwaitingConfigure) {
      return out_of_order("configure", "the VM is already configured");
    }
    auto r = vm_.Configure(configure->config);
    if (r) phase_ = Phase::kConfigured;
    return reply(r);
  }
  if (std::holds_alternative<request::Status>(request)) {
    return {.state = std::string(phase_ == Phase::kAwaitingConfigure
                                     ? protocol::vmm_control::kUnconfiguredState
                                     : ToString(vm_.state()))};
  }
  if (std::holds_alternative<request::Start>(request)) {
    if (phase_ == Phase::kAwaitingConfigure) return out_of_order("start", "configure first");
    if (phase_ == Phase::kStarted) return out_of_order("start", "the VM was already started");
    auto r = vm_.Start();
    if (r) phase_ = Phase::kStarted;
    return reply(r);
  }
  if (phase_ != Phase::kStarted) {
    return out_of_order(std::holds_alternative<request::Pause>(request) ? "pause" : "resume",
                        "the VM has not been started");
  }
  if (std::holds_alternative<request::Pause>(request)) return reply(vm_.Pause());
  return reply(vm_.Resume());
}

}  // namespace vessel::vmm
