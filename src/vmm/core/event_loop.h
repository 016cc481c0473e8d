// The VMM's I/O thread: host-side descriptors of the devices (sockets, the console log)
// are watched here with epoll, and each ready descriptor's handler runs on this thread.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>

#include "base/unique_fd.h"
#include "vessel/error.h"

namespace vessel::vmm {

class EventLoop {
 public:
  // `events` are EPOLLIN/EPOLLOUT/... as epoll reported them.
  using Handler = std::function<void(uint32_t events)>;

  [[nodiscard]] static Result<std::unique_ptr<EventLoop>> Create();

  // Watches `fd` for `events` (level-triggered). Callable from any thread, including from a
  // handler. The loop does not own `fd`.
  [[nodiscard]] Result<void> Add(int fd, uint32_t events, Handler handler);
  [[nodiscard]] Result<void> Modify(int fd, uint32_t events);
  // After Remove returns, the handler of `fd` is not called again (unless re-added).
  void Remove(int fd);

  // Runs handlers until Stop(); returns at once if Stop() came first.
  void Run();
  // Callable from any thread, including handlers.
  void Stop();

  // Keeps the loop from running handlers until Release(): returns once none runs, so that
  // the devices are still (a snapshot reads them, or loads them). A loop not running yet
  // is held from its start. Not from a handler.
  void Hold();
  void Release();

 private:
  EventLoop(UniqueFd epoll, UniqueFd wake) : epoll_(std::move(epoll)), wake_(std::move(wake)) {}
  void RunHandlers();
  void Wake();

  UniqueFd epoll_;
  UniqueFd wake_;  // eventfd that Stop() and Hold() signal
  std::mutex mutex_;
  std::map<int, std::shared_ptr<Handler>> handlers_;
  std::condition_variable changed_;
  bool stopped_ = false;
  bool running_ = false;  // in Run()
  bool held_ = false;     // Hold() asked, until Release()
  bool parked_ = false;   // Run() waits for Release()
};

}  // namespace vessel::vmm
