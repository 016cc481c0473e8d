// The agent's event loop: one poll() over the port to the host, a signalfd for SIGCHLD,
// the pipes of running commands, the files being read, the egress proxy's listening
// socket and the guest connections to it. No threads: every step is non-blocking (apart
// from fork-to-exec and synchronous file system calls), and every source of bulk data
// waits for credit and room in the port instead of blocking.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "base/unique_fd.h"
#include "files.h"
#include "net.h"
#include "port.h"
#include "process.h"
#include "protocol/wire.h"

namespace vessel::agent {

// What the host writes on the guest's serial line to ask for the dump (the kvm engine's
// vessel-vmm does on SIGUSR2).
inline constexpr std::string_view kDumpRequest = "vessel-agent-dump";

class Agent {
 public:
  // `port` is the channel to the host: the virtio-serial port or a vsock listener.
  // `dump_requests` (may be invalid) is the console's input: a line kDumpRequest there
  // makes the agent log its state, a line per command stream.
  Agent(Port port, UniqueFd dump_requests)
      : port_(std::move(port)), dump_requests_(std::move(dump_requests)) {}

  // Says hello and serves the host forever. Also reaps every orphan, as PID 1 must.
  [[noreturn]] void Run();

 private:
  void Turn();
  [[nodiscard]] int NextTimeoutMs() const;
  void Reap();
  void FinishExited();
  void CheckDeadlines();
  void OnReconnect();
  void OnDumpRequest();
  [[nodiscard]] bool MayAccept(Clock::time_point now) const;
  void AcceptConnection();

  void Handle(const protocol::FrameView& frame);
  void OnExec(uint32_t id, std::span<const uint8_t> payload);
  void OnStdin(uint32_t id, std::span<const uint8_t> payload);
  void OnSignal(uint32_t id, std::span<const uint8_t> payload);
  void OnCredit(uint32_t id, std::span<const uint8_t> payload);
  void OnResize(uint32_t id, std::span<const uint8_t> payload);
  void OnFileOp(uint32_t id, std::span<const uint8_t> payload);
  void OnFileData(uint32_t id, std::span<const uint8_t> payload);
  void OnQuiesce(uint32_t id, std::span<const uint8_t> payload);
  void OnResume(uint32_t id, std::span<const uint8_t> payload);
  void OnNetData(uint32_t id, std::span<const uint8_t> payload);
  void OnNetClose(uint32_t id, std::span<const uint8_t> payload);
  // In a clone: kills every command's process group and drops every file transfer and
  // proxied connection, without a word to the new host, which never asked for them.
  void ForgetRequests();

  // The host broke the protocol within a command or a file transfer: end that request with
  // Error(EPROTO). A command's process group is killed and the command forgotten at once,
  // so no Exited follows; PID 1 reaps it anyway.
  void FailRequest(uint32_t id, const std::string& message);
  [[nodiscard]] bool InUse(uint32_t id) const;
  [[nodiscard]] size_t OpenTransfers() const;

  Port port_;
  UniqueFd dump_requests_;
  std::string dump_line_;
  UniqueFd sigchld_;
  std::map<uint32_t, Process> processes_;
  // Transfers are neither copied nor moved: the maps construct them in place.
  std::map<uint32_t, ReadFileTransfer> reads_;
  std::map<uint32_t, WriteFileTransfer> writes_;
  // Invalid when the proxy could not listen: commands then get no proxy variables.
  UniqueFd proxy_;
  std::map<uint32_t, NetConnection> connections_;
  uint32_t next_connection_ = 1;  // the low bits of the next connection's id
  // Set while accepting failed for want of resources: the pending guest connection stays
  // in the backlog, and the listener is polled again at this time, not in a busy loop.
  std::optional<Clock::time_point> accept_retry_;
};

}  // namespace vessel::agent
