#include "vmm/control.h"

#include <fmt/format.h>

namespace vessel::vmm {

namespace request = protocol::vmm_control::request;
using protocol::vmm_control::Reply;

std::string ControlSession::Handle(std::string_view message, std::vector<UniqueFd> fds) {
  auto request = protocol::vmm_control::DecodeRequest(message);
  if (!request) return EncodeReply(Reply::Failed(request.error().message()));
  size_t expected = protocol::vmm_control::DescriptorCount(*request);
  if (fds.size() != expected) {
    return EncodeReply(
        Reply::Failed(fmt::format("\"{}\" takes {} descriptors, not {}",
                                  protocol::vmm_control::OpName(*request), expected, fds.size())));
  }
  return EncodeReply(Dispatch(*request, fds));
}

Reply ControlSession::Dispatch(const Request& request, std::vector<UniqueFd>& fds) {
  auto out_of_order = [](std::string_view op, std::string_view expected) {
    return Reply::Failed(fmt::format("\"{}\" is not allowed now: {}", op, expected));
  };
  auto reply = [](const Result<void>& r) { return r ? Reply{} : Reply::Failed(r.error()); };

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
    bool saved = configure->config.memory == MemorySource::kPrivate;
    auto r = vm_.Configure(configure->config, fds.empty() ? UniqueFd() : std::move(fds[0]));
    if (r) phase_ = saved ? Phase::kAwaitingRestore : Phase::kConfigured;
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
    if (phase_ == Phase::kAwaitingRestore) {
      return out_of_order("start", "the VM is configured on saved memory: restore it");
    }
    auto r = vm_.Start();
    if (r) phase_ = Phase::kStarted;
    return reply(r);
  }
  if (std::holds_alternative<request::Restore>(request)) {
    if (phase_ != Phase::kAwaitingRestore) {
      return out_of_order("restore", "only a VM configured on saved memory is restored, once");
    }
    auto r = vm_.Restore(fds[0].get());
    if (r) phase_ = Phase::kStarted;
    return reply(r);
  }
  if (phase_ != Phase::kStarted) {
    return out_of_order(protocol::vmm_control::OpName(request), "the VM has not been started");
  }
  if (std::holds_alternative<request::Pause>(request)) return reply(vm_.Pause());
  if (const auto* save = std::get_if<request::Save>(&request)) {
    return reply(vm_.Save(save->memory, fds[0].get(), fds.size() > 1 ? fds[1].get() : -1));
  }
  return reply(vm_.Resume());
}

}  // namespace vessel::vmm
