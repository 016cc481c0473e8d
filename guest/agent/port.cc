#include "port.h"

#include <fmt/format.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

namespace vessel::agent {
namespace {

namespace proto = vessel::protocol;

// Above this many queued bytes, bulk producers wait for the host to read.
constexpr size_t kMaxQueuedBytes = 1024 * 1024;
// Bytes read from the port per turn of the loop, so a host streaming a large file does not
// starve commands. The virtio console returns at most one page per read().
constexpr size_t kReadBudget = 1024 * 1024;
constexpr size_t kReadChunk = 64 * 1024;

bool IsUnsolicitedHello(const std::vector<uint8_t>& frame) {
  return frame[4] == static_cast<uint8_t>(proto::MessageType::kHello) && frame[8] == 0 &&
         frame[9] == 0 && frame[10] == 0 && frame[11] == 0;
}

}  // namespace

pollfd Port::PollEvents() const {
  if (!connected_) return {listener_ ? listener_.get() : -1, POLLIN, 0};
  return {fd_.get(), static_cast<short>(POLLIN | (queue_.empty() ? 0 : POLLOUT)), 0};
}

void Port::Send(std::vector<uint8_t> frame) {
  if (quiesced_) {
    held_.push_back(std::move(frame));
    return;
  }
  queued_bytes_ += frame.size();
  queue_.push_back(std::move(frame));
  // Long bursts of replies (a large directory listing) go out as they are made.
  if (queued_bytes_ >= kMaxQueuedBytes) Flush();
}

void Port::SendHello(std::vector<uint8_t> hello) {
  auto first_unstarted = queue_.begin() + (front_written_ > 0 ? 1 : 0);
  for (auto it = first_unstarted; it != queue_.end();) {
    if (IsUnsolicitedHello(*it)) {
      queued_bytes_ -= it->size();
      it = queue_.erase(it);
    } else {
      ++it;
    }
  }
  queued_bytes_ += hello.size();
  queue_.insert(queue_.begin() + (front_written_ > 0 ? 1 : 0), std::move(hello));
}

std::string Port::Describe() const {
  return fmt::format("port: {} queued_frames={} queued_bytes={} front_written={} held={}{}{}",
                     connected_ ? "connected" : "away", queue_.size(), queued_bytes_,
                     front_written_, held_.size(), quiesced_ ? " quiesced" : "",
                     HasRoom() ? "" : " no-room");
}

bool Port::HasRoom() const { return connected_ && !quiesced_ && queued_bytes_ < kMaxQueuedBytes; }

void Port::Quiesce(std::vector<uint8_t> done) {
  queued_bytes_ += done.size();
  queue_.push_back(std::move(done));
  quiesced_ = true;
}

void Port::Resume(std::vector<uint8_t> reply, bool forget_host) {
  if (forget_host) {
    queue_.clear();
    held_.clear();
    queued_bytes_ = 0;
    front_written_ = 0;
  }
  quiesced_ = false;
  Send(std::move(reply));
  while (!held_.empty()) {
    Send(std::move(held_.front()));
    held_.pop_front();
  }
}

void Port::OnPoll(short revents, const FrameHandler& handle) {
  if (!connected_) return;
  if (revents & POLLIN) {
    ReadFrames(handle);
  } else if (revents & (POLLHUP | POLLERR)) {
    Disconnect();
    return;
  }
  if (revents & POLLOUT) Flush();
}

void Port::Flush() {
  while (connected_ && !queue_.empty()) {
    const auto& frame = queue_.front();
    ssize_t n = write(fd_.get(), frame.data() + front_written_, frame.size() - front_written_);
    if (n < 0) {
      if (errno == EINTR) continue;
      // The virtio console also says EAGAIN while the host is away; poll tells which.
      if (errno != EAGAIN) Disconnect();
      return;
    }
    front_written_ += static_cast<size_t>(n);
    queued_bytes_ -= static_cast<size_t>(n);
    if (front_written_ == frame.size()) {
      queue_.pop_front();
      front_written_ = 0;
    }
  }
}

void Port::Disconnect() {
  connected_ = false;
  if (listener_) fd_.Reset();
}

bool Port::Reconnected() {
  if (connected_) return false;
  if (listener_) {
    UniqueFd host(accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!host) return false;
    fd_ = std::move(host);
  } else {
    pollfd p{fd_.get(), POLLIN, 0};
    if (poll(&p, 1, 0) < 0 || (p.revents & POLLHUP)) return false;
  }
  connected_ = true;
  reader_ = {};
  queued_bytes_ += front_written_;
  front_written_ = 0;
  return true;
}

void Port::ReadFrames(const FrameHandler& handle) {
  size_t total = 0;
  while (connected_ && total < kReadBudget) {
    // Read straight into the reader's buffer, and hand frames on from there: an upload's
    // bytes are copied once, into the file.
    auto room = reader_.Prepare(kReadChunk);
    ssize_t n = read(fd_.get(), room.data(), room.size());
    if (n == 0) {
      // The virtio console reads 0 while the host is disconnected and nothing is queued;
      // a socket, when the host closed it.
      Disconnect();
      return;
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN) Disconnect();
      return;
    }
    total += static_cast<size_t>(n);
    reader_.Commit(static_cast<size_t>(n));
    for (;;) {
      auto frame = reader_.NextView();
      if (!frame) {
        // The stream cannot be resynchronised: report, drop what was buffered, go on.
        Send(proto::EncodeError(0, {EPROTO, "", frame.error().message()}));
        reader_ = {};
        return;
      }
      if (!*frame) break;
      handle(**frame);
    }
  }
}

}  // namespace vessel::agent
