// The host end of the agent channel, shared by every request on one sandbox.
//
// A reader thread reassembles frames and routes them by request id to mailboxes, so any
// number of processes and file transfers run at once. Frames from the guest are hostile
// input: a malformed frame breaks the connection with a kBackend error; frames for a
// request nobody waits for any more are dropped.
//
// For a snapshot the channel is quiesced: Quiesce() holds every other sender back and
// waits until the agent has written its last frame, so neither direction is cut mid-frame
// when the VM is saved. Resume() wakes the agent in the same VM; a clone restored from the
// snapshot gets a new Connection on its own socket and StartResumed() instead of Start().
#pragma once

#include <array>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

#include "base/deadline.h"
#include "base/unique_fd.h"
#include "protocol/wire.h"

namespace vessel::sandbox {

// What a request is, and so which frames the agent may answer it with. A frame of any
// other type fails the request: the host never queues what nobody will read.
enum class RequestKind {
  kProcess,  // Exec: Started, Output (stdout, stderr), Credit (stdin), Exited, Error
  kFile,     // FileOp: FileInfo, FileData, Credit (file), Done, Error
  kControl,  // Quiesce, Resume: Done, Hello, Error
  kNet,      // NetOpen, the agent's: NetData, Credit (net), NetClose
};

// Frames queued for readers and not yet taken, against two budgets: each request's frames
// outside flow control (a listing's entries, credits, small answers) and every frame of
// the connection. A frame beyond either fails the request it is for, and only that one.
inline constexpr uint64_t kMaxUnwindowedBytesPerRequest = 24 * 1024 * 1024;
inline constexpr uint64_t kMaxQueuedBytesPerConnection = 256 * 1024 * 1024;
// What a queued frame costs besides its payload: the Frame and the queue's slot.
inline constexpr uint64_t kQueuedFrameOverhead = 64;

// The connection's share of the budget, which every mailbox of it draws on.
struct QueueBudget {
  std::mutex mutex;
  uint64_t queued = 0;
};

// The frames of one request, in arrival order.
class Mailbox {
 public:
  // A raw mailbox receives every frame as it came, stdin credits included: for relaying
  // a request to another party that does its own accounting.
  Mailbox(uint32_t id, RequestKind kind, bool raw,
          std::shared_ptr<QueueBudget> budget = std::make_shared<QueueBudget>())
      : id_(id), kind_(kind), raw_(raw), budget_(std::move(budget)) {}
  ~Mailbox();
  Mailbox(const Mailbox&) = delete;
  Mailbox& operator=(const Mailbox&) = delete;
  [[nodiscard]] uint32_t id() const { return id_; }

  // The next frame. Queued frames come first; then the connection's failure, if any; a
  // deadline that passes is kBackend "timed out".
  [[nodiscard]] Result<protocol::Frame> Next(Deadline deadline);
  // Next() without waiting: nullopt while nothing is queued and the request did not fail.
  [[nodiscard]] std::optional<Result<protocol::Frame>> TryNext();
  // Calls `on_change` after each frame that is queued and when the mailbox breaks, on the
  // thread that queued or broke it and without the mailbox's lock held: lets one thread
  // serve many mailboxes with TryNext(). Call before the request is sent.
  void Observe(std::function<void()> on_change);
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
  // With mutex_ held: queues `frame` or fails the request; true when an observer must
  // hear of it.
  bool Queue(protocol::Frame frame);
  void Break(const Error& error);
  // With mutex_ held: why `frame` may not be queued, if it may not.
  std::optional<Error> Refusal(const protocol::Frame& frame);
  // With mutex_ held: takes the front frame, returning its bytes to the budgets.
  protocol::Frame PopLocked();

  const uint32_t id_;
  const RequestKind kind_;
  const bool raw_;
  const std::shared_ptr<QueueBudget> budget_;
  // Bytes of frames_ (with kQueuedFrameOverhead each), and of those the frames outside
  // flow control.
  uint64_t queued_bytes_ = 0;
  uint64_t unwindowed_bytes_ = 0;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<protocol::Frame> frames_;
  std::function<void()> on_change_;
  std::optional<Error> failure_;
  uint64_t stdin_in_flight_ = 0;
  std::optional<uint32_t> inbound_window_;
  // Indexed by protocol::Stream.
  std::array<uint64_t, 6> inbound_in_flight_{};
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
  // Instead of Start(), on a connection to a clone restored from a snapshot, whose agent
  // is quiesced and waits for a new host: sends Resume and waits for the Hello answering
  // it, dropping whatever arrives before it, then starts routing frames. Call once, first.
  // `request` must be a clone's (kInvalidConfig otherwise, nothing sent). An Error from
  // the agent (it could not set the clock or reseed its RNG) is kBackend, and the
  // connection is not started: a clone with its parent's random state must not be used.
  [[nodiscard]] Result<protocol::Hello> StartResumed(const protocol::ResumeRequest& request,
                                                     Deadline deadline);

  // Quiesces the channel for a snapshot; on a started connection, from any thread. From
  // this call on, Send() from other callers blocks until Resume() returns (or fails with
  // the connection's failure when it shuts down). Sends Quiesce and waits for the agent's
  // Done: after it the agent writes nothing until it is resumed, and the host sends
  // nothing but Resume. On failure (a timeout, a broken connection) other senders are let
  // go again and the error is returned; the agent may quiesce late all the same, so a
  // caller that keeps the VM calls Resume() anyway. A second Quiesce() before Resume() is
  // a kLifecycle error.
  [[nodiscard]] Result<void> Quiesce(Deadline deadline);
  // Wakes the agent (quiesced or not) on a started connection: sends Resume, waits for the
  // Hello answering it, then lets the senders held by Quiesce() go, also when it fails.
  // Bad entropy in `request` is kInvalidConfig, with nothing sent and nobody let go. An
  // Error from the agent is kBackend; the agent is resumed all the same. With
  // request.clone the agent forgets every request it had (a clone on a new connection
  // uses StartResumed() instead).
  [[nodiscard]] Result<protocol::Hello> Resume(const protocol::ResumeRequest& request,
                                               Deadline deadline);

  // Called on the reader thread with the mailbox of each connection a guest program makes
  // to the agent's proxy (a NetOpen): the mailbox is registered, limited to kNetWindow
  // inbound and receives every later frame of it. The handler must not block, nor Send:
  // it hands the mailbox to a thread of its own. Without a handler NetOpens are dropped.
  using NetHandler = std::function<void(std::shared_ptr<Mailbox>)>;
  // Call once, before Start() or StartResumed().
  void ServeNet(NetHandler handler) { net_handler_ = std::move(handler); }

  // A fresh request id with its mailbox (see Mailbox for `raw`).
  [[nodiscard]] std::shared_ptr<Mailbox> NewRequest(RequestKind kind, bool raw = false);
  // Stops routing frames to the request; later frames for it are dropped.
  void EndRequest(uint32_t id);
  // Writes one whole frame; frames from concurrent callers never interleave. While the
  // connection is quiesced, waits for Resume() first.
  [[nodiscard]] Result<void> Send(std::span<const uint8_t> frame);

  // Fails every request, present and future, with `reason`, and stops the reader.
  // The first reason wins. Idempotent.
  void Shutdown(const Error& reason);
  // The reason the connection stopped, if it did.
  [[nodiscard]] std::optional<Error> failure() const;

 private:
  explicit Connection(UniqueFd fd) : fd_(std::move(fd)) {}
  // Before routing starts: the next frame, read on the calling thread.
  [[nodiscard]] Result<protocol::Frame> ReadFrameUnrouted(Deadline deadline);
  void ReadLoop();
  void Route(protocol::Frame frame);
  // Writes one frame; the caller holds send_mutex_. A failed write shuts the connection down.
  [[nodiscard]] Result<void> WriteLocked(std::span<const uint8_t> frame);
  void Unpause();

  // A NetOpen for an id nobody uses: a mailbox for it, handed to net_handler_.
  void OpenNet(uint32_t id);

  UniqueFd fd_;
  NetHandler net_handler_;
  protocol::FrameReader reader_;
  std::thread reader_thread_;
  // Held while writing a frame, and while checking `paused_` before it: Quiesce's frame
  // comes after every frame that passed the check and before any frame that did not.
  std::mutex send_mutex_;
  mutable std::mutex mutex_;  // guards the fields below
  std::condition_variable unpaused_;
  std::map<uint32_t, std::shared_ptr<Mailbox>> mailboxes_;
  const std::shared_ptr<QueueBudget> budget_ = std::make_shared<QueueBudget>();
  uint32_t next_id_ = 1;
  std::optional<Error> failure_;
  bool paused_ = false;  // between Quiesce() and the end of Resume()
};

// A Resume request with the host's wall clock and 64 bytes from getrandom(). Should
// getrandom() fail, the entropy is left empty, which StartResumed() and Resume() refuse
// for a clone.
[[nodiscard]] protocol::ResumeRequest MakeResumeRequest(bool clone);

}  // namespace vessel::sandbox
