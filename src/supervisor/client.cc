#include "supervisor/client.h"

#include <chrono>

namespace vessel::supervisor {
namespace {

// How long the supervisor may take to greet a client.
constexpr auto kGreetingTimeout = std::chrono::seconds(10);

}  // namespace

Result<std::shared_ptr<sandbox::Connection>> ConnectAgent(const SandboxRecord& record) {
  auto fd = ConnectToRunning(record);
  if (!fd) return Fail(std::move(fd).error());
  auto connection = sandbox::Connection::Open(fd->get());
  if (!connection) return Fail(std::move(connection).error());
  auto hello = (*connection)->Start(Deadline::After(kGreetingTimeout));
  if (!hello) return Fail(std::move(hello).error().Context("connecting to sandbox " + record.id));
  return std::move(*connection);
}

}  // namespace vessel::supervisor
