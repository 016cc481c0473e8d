// The agent's end of its channel to the host: frames in, a queue of frames out.
//
// The channel is a virtio-serial port, which stays open while the host comes and goes,
// or a listening vsock socket, each of whose connections is one host: when it drops, the
// next one is accepted. Either way the host is away for a while, then back.
//
// Nothing here blocks. Frames to send are queued and written as the port takes them, so a
// host that is slow to read, or away, never stalls the event loop. Producers of bulk data
// (command output, file contents) check HasRoom() before producing, which bounds the queue;
// replies to the host's own frames are always queued, so the agent keeps reading the port
// even while the host is not reading, and neither side can deadlock on full buffers.
//
// Quiesce() stops the writing at a frame boundary for a snapshot of the VM: the frames
// already queued go out, the Done last; frames sent after it are held, not written, until
// Resume().
#pragma once

#include <poll.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <string>
#include <vector>

#include "base/unique_fd.h"
#include "protocol/wire.h"

namespace vessel::agent {

class Port {
 public:
  // The open, non-blocking virtio-serial port.
  static Port Serial(UniqueFd port) { return Port(std::move(port), UniqueFd()); }
  // A listening, non-blocking socket; the host is away until it connects.
  static Port Listening(UniqueFd listener) { return Port(UniqueFd(), std::move(listener)); }

  // What to poll. While disconnected: the listener; a serial port gives fd -1, because it
  // then reports POLLHUP whatever is asked and would spin the loop, so Reconnected()
  // checks it on a slow tick instead.
  [[nodiscard]] pollfd PollEvents() const;
  [[nodiscard]] bool connected() const { return connected_; }

  // Queues a frame. Frames queued while the host is away are written once it is back.
  void Send(std::vector<uint8_t> frame);
  // Queues Hello ahead of every frame not yet started, replacing any unsolicited Hello
  // (request id 0) still queued: the host must see exactly one per connection, first.
  void SendHello(std::vector<uint8_t> hello);
  // Whether bulk producers may queue more now: the host is connected and keeping up, and
  // the port is not quiesced.
  [[nodiscard]] bool HasRoom() const;

  // Queues `done` after every frame queued so far and holds every later frame: `done` is
  // the last frame written until Resume(). Again while quiesced: `done` is queued behind
  // the earlier one, still before every held frame.
  void Quiesce(std::vector<uint8_t> done);
  // Writes again: first `reply`, then the held frames. With `forget_host` (a clone on a
  // new host) every frame not yet written, held or not, is dropped instead, including one
  // partly written to the old host. Also valid when not quiesced.
  void Resume(std::vector<uint8_t> reply, bool forget_host);
  [[nodiscard]] bool quiesced() const { return quiesced_; }
  // One line for a state dump.
  [[nodiscard]] std::string Describe() const;

  using FrameHandler = std::function<void(const protocol::FrameView&)>;
  // Acts on what poll() reported for PollEvents(): reads the frames that arrived and hands
  // each to `handle`, writes queued frames, notices a disconnect.
  void OnPoll(short revents, const FrameHandler& handle);
  // Writes as much of the queue as the port takes now.
  void Flush();
  // While disconnected: true once the host is back (a listener accepted its next
  // connection). The frame being received is dropped and the frame being sent starts
  // over: both were cut by the disconnect.
  [[nodiscard]] bool Reconnected();

 private:
  Port(UniqueFd fd, UniqueFd listener)
      : fd_(std::move(fd)), listener_(std::move(listener)), connected_(!listener_) {}
  void ReadFrames(const FrameHandler& handle);
  // The host went away. A connection from a listener is closed: the next host gets its own.
  void Disconnect();

  UniqueFd fd_;
  UniqueFd listener_;  // set for a vsock channel
  bool connected_;
  protocol::FrameReader reader_;
  std::deque<std::vector<uint8_t>> queue_;
  size_t queued_bytes_ = 0;   // not yet written, over the whole queue
  size_t front_written_ = 0;  // bytes of queue_.front() already written
  bool quiesced_ = false;
  // Frames sent while quiesced, written after the next Resume().
  std::deque<std::vector<uint8_t>> held_;
};

}  // namespace vessel::agent
