#include "vmm/core/event_loop.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <vector>

namespace vessel::vmm {

Result<std::unique_ptr<EventLoop>> EventLoop::Create() {
  UniqueFd epoll(epoll_create1(EPOLL_CLOEXEC));
  if (!epoll) return Fail(Error::HostIo("epoll_create1", errno));
  UniqueFd wake(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake) return Fail(Error::HostIo("eventfd", errno));
  epoll_event ev{.events = EPOLLIN, .data = {.fd = wake.get()}};
  if (epoll_ctl(epoll.get(), EPOLL_CTL_ADD, wake.get(), &ev) != 0) {
    return Fail(Error::HostIo("epoll_ctl", errno));
  }
  return std::unique_ptr<EventLoop>(new EventLoop(std::move(epoll), std::move(wake)));
}

Result<void> EventLoop::Add(int fd, uint32_t events, Handler handler) {
  std::lock_guard lock(mutex_);
  epoll_event ev{.events = events, .data = {.fd = fd}};
  if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
    return Fail(Error::HostIo("epoll_ctl add", errno));
  }
  handlers_[fd] = std::make_shared<Handler>(std::move(handler));
  return {};
}

Result<void> EventLoop::Modify(int fd, uint32_t events) {
  std::lock_guard lock(mutex_);
  epoll_event ev{.events = events, .data = {.fd = fd}};
  if (epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, fd, &ev) != 0) {
    return Fail(Error::HostIo("epoll_ctl mod", errno));
  }
  return {};
}

void EventLoop::Remove(int fd) {
  std::lock_guard lock(mutex_);
  epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
  handlers_.erase(fd);
}

void EventLoop::Run() {
  {
    std::lock_guard lock(mutex_);
    running_ = true;
  }
  RunHandlers();
  std::lock_guard lock(mutex_);
  running_ = false;
  changed_.notify_all();
}

void EventLoop::RunHandlers() {
  std::vector<epoll_event> events(64);
  for (;;) {
    {
      std::unique_lock lock(mutex_);
      if (held_ && !stopped_) {
        parked_ = true;
        changed_.notify_all();
        changed_.wait(lock, [this] { return !held_ || stopped_; });
        parked_ = false;
      }
      if (stopped_) return;
    }
    int n = epoll_wait(epoll_.get(), events.data(), static_cast<int>(events.size()), -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;
    }
    for (int i = 0; i < n; ++i) {
      int fd = events[static_cast<size_t>(i)].data.fd;
      if (fd == wake_.get()) {
        uint64_t count;
        [[maybe_unused]] ssize_t r = read(wake_.get(), &count, sizeof(count));
        continue;
      }
      std::shared_ptr<Handler> handler;
      {
        std::lock_guard lock(mutex_);
        auto it = handlers_.find(fd);
        if (it == handlers_.end()) continue;  // removed by an earlier handler this round
        handler = it->second;
      }
      (*handler)(events[static_cast<size_t>(i)].events);
    }
  }
}

void EventLoop::Stop() {
  {
    std::lock_guard lock(mutex_);
    stopped_ = true;
    changed_.notify_all();
  }
  Wake();
}

void EventLoop::Hold() {
  std::unique_lock lock(mutex_);
  held_ = true;
  if (!running_) return;
  Wake();
  changed_.wait(lock, [this] { return parked_ || !running_ || stopped_; });
}

void EventLoop::Release() {
  std::lock_guard lock(mutex_);
  held_ = false;
  changed_.notify_all();
}

void EventLoop::Wake() {
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = write(wake_.get(), &one, sizeof(one));
}

}  // namespace vessel::vmm
