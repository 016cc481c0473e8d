#include "vmm/devices/virtio_console/virtio_console.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>
#include <thread>

#include "vmm/core/state_codec.h"
#include "vmm/devices/state_test_util.h"
#include "vmm/devices/virtio/fake_virtio_driver.h"
#include "vmm/devices/virtio/host_socket.h"
#include "vmm/devices/virtio/mmio_transport.h"

namespace vessel::vmm {
namespace {

using virtio::MmioTransport;
using virtio::testing::Buf;
using virtio::testing::CountingInterrupt;
using virtio::testing::FakeDriverQueue;
using virtio::testing::GuestAllocator;
using virtio::testing::UsedElem;

constexpr uint16_t kQueueSize = 64;
constexpr uint64_t kControlBuf = 256;

struct ControlMsg {
  uint32_t id;
  uint16_t event;
  uint16_t value;
  std::string extra;
  bool operator==(const ControlMsg&) const = default;
};

std::ostream& operator<<(std::ostream& os, const ControlMsg& m) {
  return os << "{" << m.id << "," << m.event << "," << m.value << ",'" << m.extra << "'}";
}

// Reads what is available within `timeout_ms`, up to `max` bytes.
std::string ReadSome(int fd, size_t max, int timeout_ms = 5000) {
  pollfd p{fd, POLLIN, 0};
  if (poll(&p, 1, timeout_ms) <= 0) return {};
  std::string out(max, '\0');
  ssize_t n = recv(fd, out.data(), max, MSG_DONTWAIT);
  out.resize(n > 0 ? static_cast<size_t>(n) : 0);
  return out;
}

// A guest driver for the console, played through the queues, and a host peer.
class VirtioConsoleTest : public virtio::testing::VirtioDeviceTest {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(SetUpHost("console", 4 << 20));
    path_ = (dir_ / "agent.sock").string();
    Attach(MakeVirtioConsole(*loop_, path_, "org.vessel.agent"), console::kNumQueues, kQueueSize);
  }

  void Boot() {
    ASSERT_NO_FATAL_FAILURE(StartDriver(virtio::kFeatureVersion1 | console::kFeatureMultiport));
    for (int i = 0; i < 16; ++i) PostControlBuffer();
  }

  void PostControlBuffer() {
    uint64_t addr = alloc_.Alloc(kControlBuf);
    uint16_t head = queues_[console::kControlRx].Add({{addr, kControlBuf, true}});
    control_bufs_[head] = addr;
    Notify(console::kControlRx);
  }

  void SendControl(uint32_t id, uint16_t event, uint16_t value) {
    uint8_t raw[8];
    std::memcpy(raw, &id, 4);
    std::memcpy(raw + 4, &event, 2);
    std::memcpy(raw + 6, &value, 2);
    uint64_t addr = alloc_.Alloc(8);
    ASSERT_TRUE(memory_->Write(addr, raw));
    queues_[console::kControlTx].Add({{addr, 8}});
    Notify(console::kControlTx);
    // The Linux driver spins until the device has used a control buffer.
    auto used = queues_[console::kControlTx].TakeUsed();
    EXPECT_EQ(used.size(), 1u);
  }

  // The next `count` control messages from the device.
  std::vector<ControlMsg> ReadControl(size_t count) {
    std::vector<ControlMsg> out;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (out.size() < count && std::chrono::steady_clock::now() < deadline) {
      for (const UsedElem& e :
           queues_[console::kControlRx].WaitUsed(std::chrono::milliseconds(50))) {
        uint64_t addr = control_bufs_.at(static_cast<uint16_t>(e.id));
        std::vector<uint8_t> raw(e.len);
        EXPECT_TRUE(memory_->Read(addr, raw));
        ControlMsg m{};
        EXPECT_GE(raw.size(), 8u);
        if (raw.size() < 8) continue;
        std::memcpy(&m.id, raw.data(), 4);
        std::memcpy(&m.event, raw.data() + 4, 2);
        std::memcpy(&m.value, raw.data() + 6, 2);
        m.extra.assign(raw.begin() + 8, raw.end());
        out.push_back(m);
        PostControlBuffer();
      }
    }
    return out;
  }

  // DEVICE_READY through PORT_READY of both ports, then the guest opens port 1.
  void BringUpPorts() {
    Boot();
    SendControl(0, console::kDeviceReady, 1);
    EXPECT_EQ(ReadControl(2), (std::vector<ControlMsg>{{0, console::kPortAdd, 0, ""},
                                                       {1, console::kPortAdd, 0, ""}}));
    SendControl(0, console::kPortReady, 1);
    EXPECT_EQ(ReadControl(2), (std::vector<ControlMsg>{{0, console::kConsolePort, 1, ""},
                                                       {0, console::kPortOpen, 1, ""}}));
    SendControl(1, console::kPortReady, 1);
    EXPECT_EQ(ReadControl(2),
              (std::vector<ControlMsg>{{1, console::kPortName, 0, "org.vessel.agent"},
                                       {1, console::kPortOpen, 0, ""}}));
    SendControl(1, console::kPortOpen, 1);
  }

  UniqueFd ConnectHost() {
    UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path_.data(), path_.size());
    EXPECT_EQ(connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    return fd;
  }

  // Posts a receive buffer of `len` bytes on port 1; returns its guest address by head.
  void PostRx(uint32_t len) {
    uint64_t addr = alloc_.Alloc(len);
    uint16_t head = queues_[console::kPort1Rx].Add({{addr, len, true}});
    rx_bufs_[head] = addr;
    Notify(console::kPort1Rx);
  }

  std::string ReceivedByGuest(const UsedElem& e) {
    std::string out(e.len, '\0');
    EXPECT_TRUE(memory_->Read(rx_bufs_.at(static_cast<uint16_t>(e.id)),
                              {reinterpret_cast<uint8_t*>(out.data()), out.size()}));
    return out;
  }

  void Transmit(std::string_view data, size_t queue = console::kPort1Tx) {
    uint64_t addr = alloc_.Alloc(data.size());
    ASSERT_TRUE(memory_->Write(addr, {reinterpret_cast<const uint8_t*>(data.data()), data.size()}));
    queues_[queue].Add({{addr, static_cast<uint32_t>(data.size())}});
    Notify(queue);
  }

  std::string path_;
  std::map<uint16_t, uint64_t> control_bufs_;
  std::map<uint16_t, uint64_t> rx_bufs_;
};

TEST_F(VirtioConsoleTest, OffersMultiportWithTwoPorts) {
  EXPECT_EQ(FakeDriverQueue::Read32(*transport_, virtio::mmio::kDeviceId), 3u);
  FakeDriverQueue::Write32(*transport_, virtio::mmio::kDeviceFeaturesSel, 0);
  EXPECT_TRUE(FakeDriverQueue::Read32(*transport_, virtio::mmio::kDeviceFeatures) &
              console::kFeatureMultiport);
  EXPECT_EQ(FakeDriverQueue::Read32(*transport_, virtio::mmio::kConfig + 4), 2u);
}

TEST_F(VirtioConsoleTest, RefusesBadNamesAndPaths) {
  EXPECT_FALSE(MakeVirtioConsole(*loop_, (dir_ / "x.sock").string(), ""));
  EXPECT_FALSE(MakeVirtioConsole(*loop_, (dir_ / "y.sock").string(), std::string(65, 'n')));
  EXPECT_FALSE(MakeVirtioConsole(*loop_, "/" + std::string(200, 'p'), "name"));
  EXPECT_FALSE(MakeVirtioConsole(*loop_, (dir_ / "no/such/dir/z.sock").string(), "name"));
}

TEST_F(VirtioConsoleTest, AnnouncesPortsAsTheLinuxDriverExpects) { BringUpPorts(); }

TEST_F(VirtioConsoleTest, HostBytesReachGuestAndGuestBytesReachHost) {
  BringUpPorts();
  UniqueFd host = ConnectHost();
  EXPECT_EQ(ReadControl(1), (std::vector<ControlMsg>{{1, console::kPortOpen, 1, ""}}));

  PostRx(4096);
  ASSERT_EQ(write(host.get(), "hello", 5), 5);
  auto used = queues_[console::kPort1Rx].WaitUsed();
  ASSERT_EQ(used.size(), 1u);
  EXPECT_EQ(ReceivedByGuest(used[0]), "hello");
  EXPECT_GT(interrupt_->count.load(), 0);

  Transmit("world");
  EXPECT_EQ(ReadSome(host.get(), 100), "world");
  EXPECT_EQ(queues_[console::kPort1Tx].WaitUsed().size(), 1u);

  host.Reset();
  EXPECT_EQ(ReadControl(1), (std::vector<ControlMsg>{{1, console::kPortOpen, 0, ""}}));
}

TEST_F(VirtioConsoleTest, ReadsNoMoreThanTheGuestPosted) {
  BringUpPorts();
  UniqueFd host = ConnectHost();
  ReadControl(1);
  std::string big(10000, 'x');
  ASSERT_EQ(write(host.get(), big.data(), big.size()), static_cast<ssize_t>(big.size()));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_TRUE(queues_[console::kPort1Rx].TakeUsed().empty());

  PostRx(4096);
  auto used = queues_[console::kPort1Rx].WaitUsed();
  ASSERT_EQ(used.size(), 1u);
  EXPECT_EQ(used[0].len, 4096u);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_TRUE(queues_[console::kPort1Rx].TakeUsed().empty());

  // The rest arrives as buffers are posted.
  size_t got = 4096;
  while (got < big.size()) {
    PostRx(4096);
    auto more = queues_[console::kPort1Rx].WaitUsed();
    ASSERT_FALSE(more.empty());
    for (const auto& e : more) got += e.len;
  }
  EXPECT_EQ(got, big.size());
}

TEST_F(VirtioConsoleTest, HostBytesWaitUntilGuestOpensPort) {
  Boot();
  SendControl(0, console::kDeviceReady, 1);
  ReadControl(2);
  SendControl(1, console::kPortReady, 1);
  ReadControl(2);
  UniqueFd host = ConnectHost();
  EXPECT_EQ(ReadControl(1), (std::vector<ControlMsg>{{1, console::kPortOpen, 1, ""}}));
  PostRx(4096);
  ASSERT_EQ(write(host.get(), "early", 5), 5);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_TRUE(queues_[console::kPort1Rx].TakeUsed().empty());
  SendControl(1, console::kPortOpen, 1);
  auto used = queues_[console::kPort1Rx].WaitUsed();
  ASSERT_EQ(used.size(), 1u);
  EXPECT_EQ(ReceivedByGuest(used[0]), "early");
}

TEST_F(VirtioConsoleTest, GuestOutputWithoutHostIsDropped) {
  BringUpPorts();
  Transmit("nobody listens");
  EXPECT_EQ(queues_[console::kPort1Tx].WaitUsed().size(), 1u);
  Transmit("console output", console::kPort0Tx);
  EXPECT_EQ(queues_[console::kPort0Tx].WaitUsed().size(), 1u);
}

TEST_F(VirtioConsoleTest, SlowHostHoldsBackGuestTransmitQueue) {
  BringUpPorts();
  UniqueFd host = ConnectHost();
  ReadControl(1);
  std::string chunk(60000, 'a');
  constexpr int kChunks = 40;  // far more than a unix socket buffers
  for (int i = 0; i < kChunks; ++i) Transmit(chunk);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  size_t done = queues_[console::kPort1Tx].TakeUsed().size();
  EXPECT_LT(done, static_cast<size_t>(kChunks));

  size_t received = 0;
  while (received < chunk.size() * kChunks) {
    std::string got = ReadSome(host.get(), 1 << 16);
    ASSERT_FALSE(got.empty()) << "after " << received << " bytes";
    received += got.size();
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (done < kChunks && std::chrono::steady_clock::now() < deadline) {
    done += queues_[console::kPort1Tx].WaitUsed(std::chrono::milliseconds(50)).size();
  }
  EXPECT_EQ(done, static_cast<size_t>(kChunks));
}

TEST_F(VirtioConsoleTest, OneHostAtATime) {
  BringUpPorts();
  UniqueFd first = ConnectHost();
  ReadControl(1);
  UniqueFd second = ConnectHost();  // waits in the backlog
  PostRx(4096);
  ASSERT_EQ(write(second.get(), "second", 6), 6);
  ASSERT_EQ(write(first.get(), "first", 5), 5);
  auto used = queues_[console::kPort1Rx].WaitUsed();
  ASSERT_EQ(used.size(), 1u);
  EXPECT_EQ(ReceivedByGuest(used[0]), "first");

  first.Reset();
  EXPECT_EQ(ReadControl(2), (std::vector<ControlMsg>{{1, console::kPortOpen, 0, ""},
                                                     {1, console::kPortOpen, 1, ""}}));
  PostRx(4096);
  used = queues_[console::kPort1Rx].WaitUsed();
  ASSERT_EQ(used.size(), 1u);
  EXPECT_EQ(ReceivedByGuest(used[0]), "second");
}

TEST_F(VirtioConsoleTest, ResetClosesHostAndReinitialises) {
  BringUpPorts();
  UniqueFd host = ConnectHost();
  ReadControl(1);
  FakeDriverQueue::Write32(*transport_, virtio::mmio::kStatus, 0);
  char c;
  pollfd p{host.get(), POLLIN, 0};
  ASSERT_EQ(poll(&p, 1, 5000), 1);
  EXPECT_EQ(read(host.get(), &c, 1), 0);  // EOF

  // A fresh driver brings the device up again.
  queues_.clear();
  for (uint16_t i = 0; i < console::kNumQueues; ++i) {
    queues_.emplace_back(*memory_, 0x10000 + i * virtio::testing::kRingBytes, kQueueSize);
  }
  control_bufs_.clear();
  BringUpPorts();
}

TEST_F(VirtioConsoleTest, MalformedControlMessagesAreIgnored) {
  Boot();
  uint64_t addr = alloc_.Alloc(8);
  queues_[console::kControlTx].Add({{addr, 3}});  // too short
  Notify(console::kControlTx);
  EXPECT_EQ(queues_[console::kControlTx].TakeUsed().size(), 1u);
  SendControl(99, console::kPortReady, 1);  // no such port
  SendControl(1, 1234, 1);                  // unknown event
  SendControl(0, console::kDeviceReady, 1);
  EXPECT_EQ(ReadControl(2).size(), 2u);
}

TEST_F(VirtioConsoleTest, CorruptRingAsksForReset) {
  Boot();
  queues_[console::kControlTx].SetAvailIdx(1000);
  Notify(console::kControlTx);
  EXPECT_TRUE(transport_->status() & virtio::kStatusDeviceNeedsReset);
}

class VirtioConsoleStateTest : public VirtioConsoleTest {
 protected:
  [[nodiscard]] Result<void> Restore() {
    return SaveAndRestore(
        [this](EventLoop& loop) { return MakeVirtioConsole(loop, path_, "org.vessel.agent"); });
  }
};

TEST_F(VirtioConsoleStateTest, LoadedPortClosesAndReopensWhenTheHostConnects) {
  BringUpPorts();
  UniqueFd old_host = ConnectHost();
  EXPECT_EQ(ReadControl(1), (std::vector<ControlMsg>{{1, console::kPortOpen, 1, ""}}));
  PostRx(4096);
  ASSERT_EQ(write(old_host.get(), "before", 6), 6);
  auto used = queues_[console::kPort1Rx].WaitUsed();
  ASSERT_EQ(used.size(), 1u);
  EXPECT_EQ(ReceivedByGuest(used[0]), "before");
  PostRx(4096);  // held by the guest across the snapshot

  ASSERT_TRUE(Restore());
  EXPECT_EQ(ReadSome(old_host.get(), 10), "");  // the old session is over: EOF
  EXPECT_EQ(ReadControl(1), (std::vector<ControlMsg>{{1, console::kPortOpen, 0, ""}}));

  UniqueFd host = ConnectHost();
  EXPECT_EQ(ReadControl(1), (std::vector<ControlMsg>{{1, console::kPortOpen, 1, ""}}));
  ASSERT_EQ(write(host.get(), "after", 5), 5);
  used = queues_[console::kPort1Rx].WaitUsed();
  ASSERT_EQ(used.size(), 1u);
  EXPECT_EQ(ReceivedByGuest(used[0]), "after");
  Transmit("reply");
  EXPECT_EQ(ReadSome(host.get(), 100), "reply");
}

TEST_F(VirtioConsoleStateTest, ChainInFlightCompletesAndOldOutputIsDropped) {
  BringUpPorts();
  UniqueFd old_host = ConnectHost();
  ReadControl(1);
  std::string chunk(60000, 'a');
  constexpr int kChunks = 20;  // more than the socket takes: one chain stays in flight
  for (int i = 0; i < kChunks; ++i) Transmit(chunk);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  size_t done = queues_[console::kPort1Tx].TakeUsed().size();
  ASSERT_LT(done, static_cast<size_t>(kChunks));
  EXPECT_NE(transport_->DescribeState().find("tx_inflight=true"), std::string::npos);

  ASSERT_TRUE(Restore());
  done += queues_[console::kPort1Tx].TakeUsed().size();
  EXPECT_EQ(done, static_cast<size_t>(kChunks));
  EXPECT_EQ(ReadControl(1), (std::vector<ControlMsg>{{1, console::kPortOpen, 0, ""}}));
  UniqueFd host = ConnectHost();
  EXPECT_EQ(ReadControl(1), (std::vector<ControlMsg>{{1, console::kPortOpen, 1, ""}}));
  EXPECT_EQ(ReadSome(host.get(), 100, 100), "");  // nothing of the old session
  Transmit("fresh");
  EXPECT_EQ(ReadSome(host.get(), 100), "fresh");
}

TEST_F(VirtioConsoleStateTest, ControlMessagesNotYetDeliveredSurvive) {
  ASSERT_NO_FATAL_FAILURE(StartDriver(virtio::kFeatureVersion1 | console::kFeatureMultiport));
  SendControl(0, console::kDeviceReady, 1);  // no control buffer posted: both PORT_ADDs wait
  ASSERT_TRUE(Restore());
  for (int i = 0; i < 4; ++i) PostControlBuffer();
  EXPECT_EQ(ReadControl(2), (std::vector<ControlMsg>{{0, console::kPortAdd, 0, ""},
                                                     {1, console::kPortAdd, 0, ""}}));
}

TEST_F(VirtioConsoleStateTest, LoadStateRefusesDamagedState) {
  BringUpPorts();
  std::vector<uint8_t> device_state = transport_->device().SaveState();
  std::vector<uint8_t> saved = transport_->SaveState();
  ASSERT_TRUE(Restore());
  auto load = [&](std::span<const uint8_t> bytes) {
    return transport_->LoadState(testing::WithDeviceState(saved, device_state, bytes));
  };
  testing::ExpectRefusesDamaged(device_state, load);

  // A transmit chain the guest made and the device took, for a saved state to say was in
  // flight.
  constexpr uint16_t head = 60;
  queues_[console::kPort1Tx].WriteDesc(head, alloc_.Alloc(5), 5, 0, 0);
  auto state = [](uint16_t control_count, uint16_t control_bytes, bool host, bool tx,
                  uint16_t tx_head, uint64_t tx_sent) {
    StateWriter out;
    out.Put(console::kStateVersion);
    out.Put(uint8_t{1});
    out.Put(static_cast<uint8_t>(host));
    out.Put(control_count);
    for (uint16_t i = 0; i < control_count; ++i) {
      out.Put(control_bytes);
      out.Bytes(std::vector<uint8_t>(control_bytes, 0));
    }
    out.Put(static_cast<uint8_t>(tx));
    if (tx) {
      out.Put(tx_head);
      out.Put(tx_sent);
    }
    return out.Take();
  };
  testing::ExpectSnapshotFormat(load(state(65, 8, true, false, 0, 0)), "65 control messages");
  testing::ExpectSnapshotFormat(load(state(1, 7, true, false, 0, 0)), "a short control message");
  testing::ExpectSnapshotFormat(load(state(1, 73, true, false, 0, 0)), "a long control message");
  testing::ExpectSnapshotFormat(load(state(0, 0, true, true, kQueueSize, 0)),
                                "a head out of range");
  testing::ExpectSnapshotFormat(load(state(0, 0, true, true, head, 5)), "all of it sent");
  testing::ExpectSnapshotFormat(load(state(0, 0, false, true, head, 0)), "in flight with no host");
  EXPECT_TRUE(queues_[console::kPort1Tx].TakeUsed().empty());

  // The same chain, two bytes sent: taken back and completed, for no host is connected.
  ASSERT_TRUE(load(state(64, 72, true, true, head, 2)));
  auto used = queues_[console::kPort1Tx].TakeUsed();
  ASSERT_EQ(used.size(), 1u);
  EXPECT_EQ(used[0].id, head);
}

}  // namespace
}  // namespace vessel::vmm
