#include "vmm/core/event_loop.h"

#include <gtest/gtest.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>

namespace vessel::vmm {
namespace {

using namespace std::chrono_literals;

// Signals `fd`, an eventfd.
void Signal(int fd) {
  uint64_t one = 1;
  ASSERT_EQ(write(fd, &one, sizeof(one)), static_cast<ssize_t>(sizeof(one)));
}

// Waits up to a few seconds for `count` to reach `at_least`.
bool Reaches(const std::atomic<int>& count, int at_least) {
  auto deadline = std::chrono::steady_clock::now() + 5s;
  while (count.load() < at_least) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

// A handler that drains the eventfd `fd` and counts its calls in `handled`.
EventLoop::Handler Counting(int fd, std::atomic<int>& handled) {
  return [fd, &handled](uint32_t) {
    uint64_t count;
    (void)!read(fd, &count, sizeof(count));
    ++handled;
  };
}

TEST(EventLoop, AHeldLoopRunsNoHandlerUntilReleased) {
  auto loop = EventLoop::Create();
  ASSERT_TRUE(loop) << loop.error().ToString();
  UniqueFd event(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  std::atomic<int> handled = 0;
  ASSERT_TRUE((*loop)->Add(event.get(), EPOLLIN, Counting(event.get(), handled)));
  std::thread runner([&] { (*loop)->Run(); });
  Signal(event.get());
  ASSERT_TRUE(Reaches(handled, 1));

  (*loop)->Hold();
  Signal(event.get());
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(handled.load(), 1) << "a handler ran while the loop was held";
  (*loop)->Release();
  EXPECT_TRUE(Reaches(handled, 2));

  (*loop)->Stop();
  runner.join();
}

TEST(EventLoop, ALoopHeldBeforeItRunsStartsHeldAndStopsWhileHeld) {
  auto loop = EventLoop::Create();
  ASSERT_TRUE(loop) << loop.error().ToString();
  UniqueFd event(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  std::atomic<int> handled = 0;
  ASSERT_TRUE((*loop)->Add(event.get(), EPOLLIN, Counting(event.get(), handled)));
  (*loop)->Hold();
  Signal(event.get());
  std::thread runner([&] { (*loop)->Run(); });
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(handled.load(), 0);
  (*loop)->Stop();  // ends the loop although it is held
  runner.join();
  EXPECT_EQ(handled.load(), 0);
}

}  // namespace
}  // namespace vessel::vmm
