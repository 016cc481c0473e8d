// The host end of the agent channel, shared by every request on one sandbox.
//
// A reader thread reassembles frames and routes them by request id to mailboxes, so any
// number of processes and file transfers run at once. Frames from the guest are hostile
// input: a malformed frame breaks the connection with a kBackend error; frames for a
// request nobody waits for any more are dropped.
#pragma once

#include <array>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

#include "base/deadline.h"
#include "base/unique_fd.h"
#include "protocol/wire.h"

namespace vessel::sandbox {

// The frames of one request, in arrival order.
class Mailbox {
 public:
  // A raw mailbox receives every frame as it came, stdin credits included: for relaying
  // a request to another party that does its own accounting.
  Mailbox(uint32_t id, bool raw) : id_(id), raw_(raw) {}
  [[nodiscard]] uint32_t id() const { return id_; }

  // The next frame. Queued frames come first; then the connection's failure, if any; a
  // deadline that passes is kBackend "timed out".
  [[nodiscard]] Result<protocol::Frame> Next(Deadline deadline);
  // Stdin credit: blocks until `bytes` more may be in flight, the request ended, or the
  // connection failed.
  [[nodiscard]] Result<void> AcquireStdinCredit(uint32_t bytes, uint32_t window, Deadline deadline);
  // Caps the data the agent may send ahead of the host's credits: each stream's Output
  // bytes, and FileData bytes, count against `window` until Granted() returns them. A
  // frame beyond it fails the request with kBackend instead of being queued, so a guest
  // that ignores flow control cannot make the host buffer without bound. Call before the
  // request is sent; without it nothing is counted.
  void LimitInbound(uint32_t window);
  // Returns `bytes` of `stream` to the window. Call before sending the Credit frame, so
  // that the agent's answer to it cannot arrive first.
  void Granted(protocol::Stream stream, uint32_t bytes);
  // True once the request's last frame (Exited, Error, Done) arrived.
  [[nodiscard]] bool ended() const;
  // Wakes every waiter on this mailbox with `reason`; later waits fail with it too.
  void Cancel(const Error& reason) { Break(reason); }

 private:
  friend class Connection;
  void Push(protocol::Frame frame);
  void Break(const Error& error);

  const uint32_t id_;
  const bool raw_;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<protocol::Frame> frames_;
  std::optional<Error> failure_;
  uint64_t stdin_in_flight_ = 0;
  std::optional<uint32_t> inbound_window_;
  // Indexed by protocol::Stream.
  std::array<uint64_t, 5> inbound_in_flight_{};
  bool ended_ = false;
};

class Connection {
 public:
  // Uses a duplicate of `fd`, so the connection may outlive the VM that owns `fd`.
  [[nodiscard]] static Result<std::shared_ptr<Connection>> Open(int fd);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Waits for the agent's hello, then starts routing frames. Call once, first.
  [[nodiscard]] Result<protocol::Hello> Start(Deadline deadline);

  // A fresh request id with its mailbox (see Mailbox for `raw`).
  [[nodiscard]] std::shared_ptr<Mailbox> NewRequest(bool raw = false);
  // Stops routing frames to the request; later frames for it are dropped.
  void EndRequest(uint32_t id);
  // Writes one whole frame; frames from concurrent callers never interleave.
  [[nodiscard]] Result<void> Send(std::span<const uint8_t> frame);

  // Fails every request, present and future, with `reason`, and stops the reader.
  // The first reason wins. Idempotent.
  void Shutdown(const Error& reason);
  // The reason the connection stopped, if it did.
  [[nodiscard]] std::optional<Error> failure() const;

 private:
  explicit Connection(UniqueFd fd) : fd_(std::move(fd)) {}
  void ReadLoop();
  void Route(protocol::Frame frame);

  UniqueFd fd_;
  protocol::FrameReader reader_;
  std::thread reader_thread_;
  std::mutex send_mutex_;
  mutable std::mutex mutex_;  // guards the fields below
  std::map<uint32_t, std::shared_ptr<Mailbox>> mailboxes_;
  uint32_t next_id_ = 1;
  std::optional<Error> failure_;
};

}  // namespace vessel::sandbox
