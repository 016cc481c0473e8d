#include "vmm/devices/vsock/virtio_vsock.h"

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <filesystem>
#include <map>
#include <string>
#include <thread>

#include "vmm/devices/state_test_util.h"
#include "vmm/devices/virtio/fake_virtio_driver.h"
#include "vmm/devices/virtio/mmio_transport.h"
#include "vmm/devices/vsock/vsock_packet.h"

namespace vessel::vmm {
namespace {

using ::testing::HasSubstr;
using virtio::MmioTransport;
using virtio::testing::CountingInterrupt;
using virtio::testing::FakeDriverQueue;
using virtio::testing::GuestAllocator;
using virtio::testing::UsedElem;
using vsock::Op;
using vsock::PacketHeader;

constexpr uint64_t kGuestCid = 3;
constexpr uint16_t kQueueSize = 256;
constexpr uint32_t kRxBuf = 4096 + 44;
constexpr uint32_t kGuestPort = 49152;

struct Packet {
  PacketHeader header;
  std::string payload;
};

UniqueFd ConnectTo(const std::string& path) {
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  EXPECT_EQ(connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0) << path;
  return fd;
}

UniqueFd ListenAt(const std::string& path) {
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  EXPECT_EQ(bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  EXPECT_EQ(listen(fd.get(), 128), 0);
  return fd;
}

// What arrives on `fd` within `timeout_ms`: up to `max` bytes, "" on timeout, "<EOF>" at
// end of stream.
std::string ReadSome(int fd, size_t max = 65536, int timeout_ms = 5000) {
  pollfd p{fd, POLLIN, 0};
  if (poll(&p, 1, timeout_ms) <= 0) return {};
  std::string out(max, '\0');
  ssize_t n = recv(fd, out.data(), max, MSG_DONTWAIT);
  if (n == 0 || (n < 0 && errno != EAGAIN)) return "<EOF>";
  out.resize(n > 0 ? static_cast<size_t>(n) : 0);
  return out;
}

std::string ReadExactly(int fd, size_t n) {
  std::string out;
  while (out.size() < n) {
    std::string got = ReadSome(fd, n - out.size());
    if (got.empty() || got == "<EOF>") break;
    out += got;
  }
  return out;
}

class VirtioVsockTest : public virtio::testing::VirtioDeviceTest {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(SetUpHost("vsock", 16 << 20));
    uds_ = (dir_ / "v.sock").string();
    Attach(MakeVirtioVsock(*loop_, kGuestCid, uds_), vsock::kNumQueues, kQueueSize);
  }

  void Boot(int rx_buffers = 32) {
    ASSERT_NO_FATAL_FAILURE(StartDriver(virtio::kFeatureVersion1));
    PostRx(rx_buffers);
  }

  void PostRx(int count) {
    for (int i = 0; i < count; ++i) {
      uint64_t addr = alloc_.Alloc(kRxBuf);
      uint16_t head = queues_[vsock::kRxQueue].Add({{addr, kRxBuf, true}});
      rx_bufs_[head] = addr;
    }
    Notify(vsock::kRxQueue);
  }

  PacketHeader Guest(Op op, uint32_t host_port, uint32_t len = 0) const {
    return {.src_cid = kGuestCid,
            .dst_cid = vsock::kHostCid,
            .src_port = kGuestPort,
            .dst_port = host_port,
            .len = len,
            .type = vsock::kTypeStream,
            .op = static_cast<uint16_t>(op),
            .flags = 0,
            .buf_alloc = guest_buf_alloc_,
            .fwd_cnt = guest_fwd_cnt_};
  }

  // Transmits a packet; the header in one buffer, the payload in another, as Linux does.
  void Send(PacketHeader h, std::string_view payload = {}) {
    h.len = static_cast<uint32_t>(payload.size());
    auto raw = vsock::EncodeHeader(h);
    uint64_t hdr = alloc_.Alloc(raw.size());
    ASSERT_TRUE(memory_->Write(hdr, raw));
    std::vector<virtio::testing::Buf> bufs = {{hdr, static_cast<uint32_t>(raw.size())}};
    if (!payload.empty()) {
      uint64_t data = alloc_.Alloc(payload.size());
      ASSERT_TRUE(
          memory_->Write(data, {reinterpret_cast<const uint8_t*>(payload.data()), payload.size()}));
      bufs.push_back({data, static_cast<uint32_t>(payload.size())});
    }
    queues_[vsock::kTxQueue].Add(bufs);
    Notify(vsock::kTxQueue);
    EXPECT_EQ(queues_[vsock::kTxQueue].TakeUsed().size(), 1u);
  }

  // Packets the device put in the receive queue; waits for at least `min` of them. Each
  // consumed buffer is posted again.
  std::vector<Packet> Receive(size_t min = 1, int timeout_ms = 5000) {
    std::vector<Packet> out;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    do {
      for (const UsedElem& e : queues_[vsock::kRxQueue].WaitUsed(std::chrono::milliseconds(20))) {
        uint64_t addr = rx_bufs_.at(static_cast<uint16_t>(e.id));
        EXPECT_GE(e.len, vsock::kHeaderSize);
        std::vector<uint8_t> raw(e.len);
        EXPECT_TRUE(memory_->Read(addr, raw));
        Packet p;
        p.header = vsock::DecodeHeader(std::span<const uint8_t, 44>(raw.data(), 44));
        p.payload.assign(raw.begin() + 44, raw.end());
        EXPECT_EQ(p.header.len, p.payload.size());
        EXPECT_EQ(p.header.src_cid, vsock::kHostCid);
        EXPECT_EQ(p.header.dst_cid, kGuestCid);
        out.push_back(p);
        PostRx(1);
      }
    } while (out.size() < min && std::chrono::steady_clock::now() < deadline);
    return out;
  }

  // Host connects with CONNECT 1024, guest accepts; returns the host socket.
  UniqueFd HostConnect(uint32_t guest_port = 1024) {
    UniqueFd host = ConnectTo(uds_);
    std::string line = "CONNECT " + std::to_string(guest_port) + "\n";
    EXPECT_EQ(write(host.get(), line.data(), line.size()), static_cast<ssize_t>(line.size()));
    auto pkts = Receive();
    EXPECT_EQ(pkts.size(), 1u);
    if (pkts.empty()) return host;
    const PacketHeader& req = pkts[0].header;
    EXPECT_EQ(req.op, static_cast<uint16_t>(Op::kRequest));
    EXPECT_EQ(req.dst_port, guest_port);
    EXPECT_GE(req.src_port, vsock::kFirstLocalPort);
    EXPECT_EQ(req.buf_alloc, vsock::kConnectionBuffer);
    host_port_ = req.src_port;
    PacketHeader resp = Guest(Op::kResponse, host_port_);
    resp.src_port = guest_port;
    Send(resp);
    EXPECT_EQ(ReadSome(host.get()), "OK " + std::to_string(host_port_) + "\n");
    guest_port_ = guest_port;
    return host;
  }

  // Returns once the device's event loop handled every host-side event that came before:
  // the loop takes ready sockets in order, and a garbage CONNECT line is closed at once.
  void SyncWithDevice() {
    UniqueFd probe = ConnectTo(uds_);
    ASSERT_EQ(write(probe.get(), "SYNC\n", 5), 5);
    ASSERT_EQ(ReadSome(probe.get()), "<EOF>");
  }

  PacketHeader OnConn(Op op) const {
    PacketHeader h = Guest(op, host_port_);
    h.src_port = guest_port_;
    return h;
  }

  std::string uds_;
  std::map<uint16_t, uint64_t> rx_bufs_;
  uint32_t guest_buf_alloc_ = 262144;
  uint32_t guest_fwd_cnt_ = 0;
  uint32_t host_port_ = 0;
  uint32_t guest_port_ = 0;
};

TEST_F(VirtioVsockTest, ConfigIsTheGuestCid) {
  EXPECT_EQ(FakeDriverQueue::Read32(*transport_, virtio::mmio::kDeviceId), 19u);
  EXPECT_EQ(FakeDriverQueue::Read32(*transport_, virtio::mmio::kConfig), kGuestCid);
  EXPECT_EQ(FakeDriverQueue::Read32(*transport_, virtio::mmio::kConfig + 4), 0u);
}

TEST_F(VirtioVsockTest, RefusesReservedCidsAndBadPaths) {
  EXPECT_FALSE(MakeVirtioVsock(*loop_, 2, (dir_ / "a.sock").string()));
  EXPECT_FALSE(MakeVirtioVsock(*loop_, UINT32_MAX, (dir_ / "b.sock").string()));
  EXPECT_FALSE(MakeVirtioVsock(*loop_, 3, "/" + std::string(200, 'x')));
}

TEST_F(VirtioVsockTest, HostConnectsAndBytesFlowBothWays) {
  Boot();
  UniqueFd host = HostConnect();
  ASSERT_EQ(write(host.get(), "ping", 4), 4);
  auto pkts = Receive();
  ASSERT_EQ(pkts.size(), 1u);
  EXPECT_EQ(pkts[0].header.op, static_cast<uint16_t>(Op::kRw));
  EXPECT_EQ(pkts[0].header.src_port, host_port_);
  EXPECT_EQ(pkts[0].header.dst_port, 1024u);
  EXPECT_EQ(pkts[0].payload, "ping");

  Send(OnConn(Op::kRw), "pong");
  EXPECT_EQ(ReadSome(host.get()), "pong");
  EXPECT_GT(interrupt_->count.load(), 0);
}

TEST_F(VirtioVsockTest, StateDumpShowsQueuesAndEachConnectionsCredit) {
  EXPECT_THAT(transport_->DescribeState(), HasSubstr("not active"));
  Boot();
  UniqueFd host = HostConnect();
  ASSERT_EQ(write(host.get(), "ping", 4), 4);
  ASSERT_EQ(Receive().size(), 1u);
  std::string dump = transport_->DescribeState();
  EXPECT_THAT(dump, HasSubstr("virtio device type 19"));
  EXPECT_THAT(dump, HasSubstr("queue 0: size="));
  EXPECT_THAT(dump, HasSubstr("connections=1"));
  EXPECT_THAT(dump, HasSubstr(fmt::format("conn {}<->1024 connected", host_port_)));
  EXPECT_THAT(dump, HasSubstr("tx_cnt=4"));
}

TEST_F(VirtioVsockTest, HostConnectBeforeDriverIsUpWaitsForIt) {
  UniqueFd host = ConnectTo(uds_);
  ASSERT_EQ(write(host.get(), "CONNECT 1024\n", 13), 13);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  Boot();
  auto pkts = Receive();
  ASSERT_EQ(pkts.size(), 1u);
  EXPECT_EQ(pkts[0].header.op, static_cast<uint16_t>(Op::kRequest));
}

TEST_F(VirtioVsockTest, HostHangUpBeforeDriverIsUpWithdrawsItsRequest) {
  // Hung up after the device read the line.
  UniqueFd read_then_gone = ConnectTo(uds_);
  ASSERT_EQ(write(read_then_gone.get(), "CONNECT 1024\n", 13), 13);
  SyncWithDevice();
  read_then_gone.Reset();
  // Hung up before the device read the line.
  UniqueFd gone_at_once = ConnectTo(uds_);
  ASSERT_EQ(write(gone_at_once.get(), "CONNECT 1025\n", 13), 13);
  gone_at_once.Reset();
  // Half-closed: nothing more will come, so the host is not waiting either.
  UniqueFd half_closed = ConnectTo(uds_);
  ASSERT_EQ(write(half_closed.get(), "CONNECT 1026\n", 13), 13);
  SyncWithDevice();
  ASSERT_EQ(shutdown(half_closed.get(), SHUT_WR), 0);
  SyncWithDevice();
  EXPECT_EQ(ReadSome(half_closed.get()), "<EOF>");

  Boot();
  EXPECT_TRUE(Receive(1, 200).empty());
}

TEST_F(VirtioVsockTest, HostHangUpAfterRequestResetsItAndItsLateResponse) {
  Boot();
  UniqueFd host = ConnectTo(uds_);
  ASSERT_EQ(write(host.get(), "CONNECT 1024\n", 13), 13);
  auto pkts = Receive();
  ASSERT_EQ(pkts.size(), 1u);
  ASSERT_EQ(pkts[0].header.op, static_cast<uint16_t>(Op::kRequest));
  uint32_t stale_port = pkts[0].header.src_port;
  host.Reset();
  pkts = Receive();
  ASSERT_EQ(pkts.size(), 1u);
  EXPECT_EQ(pkts[0].header.op, static_cast<uint16_t>(Op::kRst));
  EXPECT_EQ(pkts[0].header.src_port, stale_port);
  EXPECT_EQ(pkts[0].header.dst_port, 1024u);

  // The guest had accepted before it saw the reset.
  PacketHeader late = Guest(Op::kResponse, stale_port);
  late.src_port = 1024;
  Send(late);
  pkts = Receive();
  ASSERT_EQ(pkts.size(), 1u);
  EXPECT_EQ(pkts[0].header.op, static_cast<uint16_t>(Op::kRst));
  EXPECT_EQ(pkts[0].header.src_port, stale_port);
  EXPECT_EQ(pkts[0].header.dst_port, 1024u);

  // The host's retry is a connection of its own.
  UniqueFd live = HostConnect(1024);
  EXPECT_NE(host_port_, stale_port);
  Send(OnConn(Op::kRw), "hello");
  EXPECT_EQ(ReadSome(live.get()), "hello");
}

TEST_F(VirtioVsockTest, LiveConnectionAfterStaleRetriesGetsOkAndBytes) {
  // A host retrying while the guest boots: each attempt gives up and the next one comes.
  for (int i = 0; i < 10; ++i) {
    UniqueFd attempt = ConnectTo(uds_);
    ASSERT_EQ(write(attempt.get(), "CONNECT 1024\n", 13), 13);
    if (i % 2 == 0) SyncWithDevice();
  }
  UniqueFd live = ConnectTo(uds_);
  ASSERT_EQ(write(live.get(), "CONNECT 1024\n", 13), 13);
  SyncWithDevice();

  Boot();
  auto pkts = Receive();
  ASSERT_EQ(pkts.size(), 1u);
  EXPECT_TRUE(Receive(1, 100).empty());
  const PacketHeader& req = pkts[0].header;
  ASSERT_EQ(req.op, static_cast<uint16_t>(Op::kRequest));
  EXPECT_EQ(req.dst_port, 1024u);
  host_port_ = req.src_port;
  guest_port_ = 1024;
  Send(OnConn(Op::kResponse));
  EXPECT_EQ(ReadSome(live.get()), "OK " + std::to_string(host_port_) + "\n");

  Send(OnConn(Op::kRw), "hello frame");
  EXPECT_EQ(ReadSome(live.get()), "hello frame");
  ASSERT_EQ(write(live.get(), "ack", 3), 3);
  pkts = Receive();
  ASSERT_EQ(pkts.size(), 1u);
  EXPECT_EQ(pkts[0].header.op, static_cast<uint16_t>(Op::kRw));
  EXPECT_EQ(pkts[0].payload, "ack");
}

TEST_F(VirtioVsockTest, GuestRefusalClosesHostSocket) {
  Boot();
  UniqueFd host = ConnectTo(uds_);
  ASSERT_EQ(write(host.get(), "CONNECT 7\n", 10), 10);
  auto pkts = Receive();
  ASSERT_EQ(pkts.size(), 1u);
  PacketHeader rst = Guest(Op::kRst, pkts[0].header.src_port);
  rst.src_port = 7;
  Send(rst);
  EXPECT_EQ(ReadSome(host.get()), "<EOF>");
}

TEST_F(VirtioVsockTest, GarbageConnectLinesAreClosed) {
  Boot();
  for (const std::string& line : std::vector<std::string>{
           "HELLO 1024\n", "CONNECT\n", "CONNECT abc\n", "CONNECT 12x\n", "CONNECT 99999999999\n",
           "CONNECT -1\n", "CONNECT  1\n", std::string(40, 'C')}) {
    UniqueFd host = ConnectTo(uds_);
    ASSERT_EQ(write(host.get(), line.data(), line.size()), static_cast<ssize_t>(line.size()));
    EXPECT_EQ(ReadSome(host.get()), "<EOF>") << line;
  }
  EXPECT_TRUE(Receive(1, 100).empty());
}

TEST_F(VirtioVsockTest, ConnectLineMayArriveInPieces) {
  Boot();
  UniqueFd host = ConnectTo(uds_);
  ASSERT_EQ(write(host.get(), "CONN", 4), 4);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_EQ(write(host.get(), "ECT 1024\n", 9), 9);
  auto pkts = Receive();
  ASSERT_EQ(pkts.size(), 1u);
  EXPECT_EQ(pkts[0].header.dst_port, 1024u);
}

TEST_F(VirtioVsockTest, NeverSendsTheGuestMoreThanItsCredit) {
  guest_buf_alloc_ = 1000;
  Boot();
  UniqueFd host = HostConnect();
  std::string big(5000, 'z');
  ASSERT_EQ(write(host.get(), big.data(), big.size()), 5000);
  size_t got = 0;
  bool asked = false;
  for (const Packet& p : Receive(1)) {
    if (p.header.op == static_cast<uint16_t>(Op::kRw)) got += p.payload.size();
    if (p.header.op == static_cast<uint16_t>(Op::kCreditRequest)) asked = true;
  }
  for (const Packet& p : Receive(1, 200)) {
    if (p.header.op == static_cast<uint16_t>(Op::kRw)) got += p.payload.size();
    if (p.header.op == static_cast<uint16_t>(Op::kCreditRequest)) asked = true;
  }
  EXPECT_EQ(got, 1000u);
  EXPECT_TRUE(asked);

  // The guest consumed everything: 1000 more.
  guest_fwd_cnt_ = 1000;
  Send(OnConn(Op::kCreditUpdate));
  size_t more = 0;
  for (const Packet& p : Receive(1)) {
    if (p.header.op == static_cast<uint16_t>(Op::kRw)) more += p.payload.size();
  }
  EXPECT_EQ(more, 1000u);
}

TEST_F(VirtioVsockTest, BuffersOnlyWhatItAdvertises) {
  Boot();
  UniqueFd host = HostConnect();
  // The host does not read. Once its socket is full the device holds what the guest sends,
  // up to kConnectionBuffer bytes beyond what it forwarded, and no more.
  std::string chunk(65536, 'g');
  uint64_t sent = 0;
  uint32_t fwd = 0;
  auto exact_fwd = [&] {
    Send(OnConn(Op::kCreditRequest));
    for (const Packet& p : Receive(1)) {
      EXPECT_NE(p.header.op, static_cast<uint16_t>(Op::kRst));
      fwd = p.header.fwd_cnt;
    }
  };
  for (;;) {
    exact_fwd();
    uint64_t held = sent - fwd;
    if (held + chunk.size() > vsock::kConnectionBuffer) break;
    Send(OnConn(Op::kRw), chunk);
    sent += chunk.size();
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  exact_fwd();
  size_t room = vsock::kConnectionBuffer - (sent - fwd);
  if (room > 0) Send(OnConn(Op::kRw), std::string(room, 'r'));
  EXPECT_TRUE(Receive(1, 100).empty());  // filled exactly: no reset
  Send(OnConn(Op::kRw), "x");
  auto pkts = Receive();
  ASSERT_FALSE(pkts.empty());
  EXPECT_EQ(pkts.back().header.op, static_cast<uint16_t>(Op::kRst));
  EXPECT_EQ(ReadSome(host.get(), 1, 100), "g");  // what was forwarded is still there
}

TEST_F(VirtioVsockTest, ForwardedBytesComeBackAsCredit) {
  Boot();
  UniqueFd host = HostConnect();
  std::string chunk(65536, 'g');
  for (int i = 0; i < 4; ++i) Send(OnConn(Op::kRw), chunk);
  EXPECT_EQ(ReadExactly(host.get(), 4 * chunk.size()).size(), 4 * chunk.size());
  uint32_t fwd = 0;
  for (const Packet& p : Receive(1)) {
    if (p.header.op == static_cast<uint16_t>(Op::kCreditUpdate)) fwd = p.header.fwd_cnt;
  }
  EXPECT_GE(fwd, vsock::kConnectionBuffer / 4);
  // Asked for, credit comes at once. The update for the last bytes the host read may come
  // just before the answer, as the device queues it after its send returns.
  Send(OnConn(Op::kCreditRequest));
  auto pkts = Receive();
  ASSERT_FALSE(pkts.empty());
  EXPECT_LE(pkts.size(), 2u);
  for (const Packet& p : pkts) {
    EXPECT_EQ(p.header.op, static_cast<uint16_t>(Op::kCreditUpdate));
    EXPECT_EQ(p.header.buf_alloc, vsock::kConnectionBuffer);
  }
  EXPECT_EQ(pkts.back().header.fwd_cnt, 4 * chunk.size());
}

TEST_F(VirtioVsockTest, HostEofBecomesShutdownThenReset) {
  Boot();
  UniqueFd host = HostConnect();
  host.Reset();
  auto pkts = Receive(2);
  ASSERT_EQ(pkts.size(), 2u);
  EXPECT_EQ(pkts[0].header.op, static_cast<uint16_t>(Op::kShutdown));
  EXPECT_EQ(pkts[0].header.flags, vsock::kShutdownRecv | vsock::kShutdownSend);
  EXPECT_EQ(pkts[1].header.op, static_cast<uint16_t>(Op::kRst));
  // Later packets for it are answered with a reset.
  Send(OnConn(Op::kRw), "late");
  pkts = Receive();
  ASSERT_EQ(pkts.size(), 1u);
  EXPECT_EQ(pkts[0].header.op, static_cast<uint16_t>(Op::kRst));
}

TEST_F(VirtioVsockTest, GuestShutdownDeliversPendingDataThenClosesHost) {
  Boot();
  UniqueFd host = HostConnect();
  Send(OnConn(Op::kRw), "last words");
  PacketHeader shut = OnConn(Op::kShutdown);
  shut.flags = vsock::kShutdownRecv | vsock::kShutdownSend;
  Send(shut);
  EXPECT_EQ(ReadExactly(host.get(), 10), "last words");
  EXPECT_EQ(ReadSome(host.get()), "<EOF>");
  auto pkts = Receive();
  ASSERT_FALSE(pkts.empty());
  EXPECT_EQ(pkts.back().header.op, static_cast<uint16_t>(Op::kRst));
}

TEST_F(VirtioVsockTest, GuestShutdownWithNothingPendingClosesHostAtOnce) {
  Boot();
  UniqueFd host = HostConnect();
  PacketHeader shut = OnConn(Op::kShutdown);
  shut.flags = vsock::kShutdownRecv | vsock::kShutdownSend;
  Send(shut);
  EXPECT_EQ(ReadSome(host.get()), "<EOF>");
  auto pkts = Receive();
  ASSERT_EQ(pkts.size(), 1u);
  EXPECT_EQ(pkts[0].header.op, static_cast<uint16_t>(Op::kRst));
}

TEST_F(VirtioVsockTest, GuestHalfCloseShutsHostWriteSide) {
  Boot();
  UniqueFd host = HostConnect();
  PacketHeader shut = OnConn(Op::kShutdown);
  shut.flags = vsock::kShutdownSend;
  Send(shut);
  EXPECT_EQ(ReadSome(host.get()), "<EOF>");
  ASSERT_EQ(write(host.get(), "reply", 5), 5);  // the other way still works
  auto pkts = Receive();
  ASSERT_EQ(pkts.size(), 1u);
  EXPECT_EQ(pkts[0].payload, "reply");
}

TEST_F(VirtioVsockTest, GuestResetClosesHost) {
  Boot();
  UniqueFd host = HostConnect();
  Send(OnConn(Op::kRst));
  EXPECT_EQ(ReadSome(host.get()), "<EOF>");
  EXPECT_TRUE(Receive(1, 100).empty());  // no reset for a reset
}

TEST_F(VirtioVsockTest, GuestConnectsToHostListener) {
  UniqueFd listener = ListenAt(uds_ + "_5000");
  Boot();
  Send(Guest(Op::kRequest, 5000));
  auto pkts = Receive();
  ASSERT_EQ(pkts.size(), 1u);
  EXPECT_EQ(pkts[0].header.op, static_cast<uint16_t>(Op::kResponse));
  EXPECT_EQ(pkts[0].header.src_port, 5000u);
  EXPECT_EQ(pkts[0].header.dst_port, kGuestPort);
  UniqueFd conn(accept(listener.get(), nullptr, nullptr));
  ASSERT_TRUE(conn);
  host_port_ = 5000;
  guest_port_ = kGuestPort;
  Send(OnConn(Op::kRw), "from guest");
  EXPECT_EQ(ReadSome(conn.get()), "from guest");
  ASSERT_EQ(write(conn.get(), "from host", 9), 9);
  pkts = Receive();
  ASSERT_EQ(pkts.size(), 1u);
  EXPECT_EQ(pkts[0].payload, "from host");
}

TEST_F(VirtioVsockTest, GuestConnectWithNobodyListeningIsReset) {
  Boot();
  Send(Guest(Op::kRequest, 6000));
  auto pkts = Receive();
  ASSERT_EQ(pkts.size(), 1u);
  EXPECT_EQ(pkts[0].header.op, static_cast<uint16_t>(Op::kRst));
  EXPECT_EQ(pkts[0].header.src_port, 6000u);
}

TEST_F(VirtioVsockTest, ConnectionCountIsBounded) {
  UniqueFd listener = ListenAt(uds_ + "_5000");
  Boot(static_cast<int>(vsock::kMaxConnections) + 8);
  for (uint32_t i = 0; i <= vsock::kMaxConnections; ++i) {
    PacketHeader req = Guest(Op::kRequest, 5000);
    req.src_port = 1000 + i;
    Send(req);
  }
  auto pkts = Receive(vsock::kMaxConnections + 1);
  ASSERT_EQ(pkts.size(), vsock::kMaxConnections + 1);
  for (size_t i = 0; i < vsock::kMaxConnections; ++i) {
    EXPECT_EQ(pkts[i].header.op, static_cast<uint16_t>(Op::kResponse));
  }
  EXPECT_EQ(pkts.back().header.op, static_cast<uint16_t>(Op::kRst));
  // Host connections beyond the cap are closed at once.
  UniqueFd host = ConnectTo(uds_);
  EXPECT_EQ(ReadSome(host.get()), "<EOF>");
}

TEST_F(VirtioVsockTest, PacketsWithForeignCidsAreDropped) {
  Boot();
  UniqueFd host = HostConnect();
  PacketHeader spoofed = OnConn(Op::kRw);
  spoofed.src_cid = 4;
  Send(spoofed, "spoof");
  PacketHeader elsewhere = OnConn(Op::kRw);
  elsewhere.dst_cid = 5;
  Send(elsewhere, "elsewhere");
  EXPECT_EQ(ReadSome(host.get(), 100, 100), "");
  EXPECT_TRUE(Receive(1, 100).empty());
}

TEST_F(VirtioVsockTest, UnknownOpAndWrongTypeAreReset) {
  Boot();
  PacketHeader odd = Guest(static_cast<Op>(99), 1);
  Send(odd);
  PacketHeader dgram = Guest(Op::kRequest, 1);
  dgram.type = 2;
  Send(dgram);
  auto pkts = Receive(2);
  ASSERT_EQ(pkts.size(), 2u);
  for (const Packet& p : pkts) EXPECT_EQ(p.header.op, static_cast<uint16_t>(Op::kRst));
}

TEST_F(VirtioVsockTest, MalformedPacketsAreDroppedAndTheQueueGoesOn) {
  Boot();
  UniqueFd host = HostConnect();
  // len says 100, the chain carries 4.
  PacketHeader h = OnConn(Op::kRw);
  h.len = 100;
  auto raw = vsock::EncodeHeader(h);
  uint64_t addr = alloc_.Alloc(64);
  ASSERT_TRUE(memory_->Write(addr, raw));
  queues_[vsock::kTxQueue].Add({{addr, 44}, {addr, 4}});
  // A header cut short.
  queues_[vsock::kTxQueue].Add({{addr, 20}});
  Notify(vsock::kTxQueue);
  EXPECT_EQ(queues_[vsock::kTxQueue].TakeUsed().size(), 2u);
  Send(OnConn(Op::kRw), "still fine");
  EXPECT_EQ(ReadSome(host.get()), "still fine");
}

TEST_F(VirtioVsockTest, ResponseWithoutRequestIsReset) {
  Boot();
  Send(Guest(Op::kResponse, 1234));
  auto pkts = Receive();
  ASSERT_EQ(pkts.size(), 1u);
  EXPECT_EQ(pkts[0].header.op, static_cast<uint16_t>(Op::kRst));
}

TEST_F(VirtioVsockTest, DeviceResetClosesEveryHostConnection) {
  Boot();
  UniqueFd a = HostConnect(1024);
  UniqueFd b = HostConnect(1025);
  FakeDriverQueue::Write32(*transport_, virtio::mmio::kStatus, 0);
  EXPECT_EQ(ReadSome(a.get()), "<EOF>");
  EXPECT_EQ(ReadSome(b.get()), "<EOF>");
}

TEST_F(VirtioVsockTest, GuestWithoutRxBuffersStallsNothingElse) {
  Boot(0);
  UniqueFd host = ConnectTo(uds_);
  ASSERT_EQ(write(host.get(), "CONNECT 1024\n", 13), 13);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  PostRx(4);
  auto pkts = Receive();
  ASSERT_EQ(pkts.size(), 1u);
  EXPECT_EQ(pkts[0].header.op, static_cast<uint16_t>(Op::kRequest));
}

class VirtioVsockStateTest : public VirtioVsockTest {
 protected:
  [[nodiscard]] Result<void> Restore() {
    return SaveAndRestore(
        [this](EventLoop& loop) { return MakeVirtioVsock(loop, kGuestCid, uds_); });
  }

  // Posts `count` event buffers of struct virtio_vsock_event's size, as Linux does.
  void PostEvents(int count) {
    for (int i = 0; i < count; ++i) {
      uint64_t addr = alloc_.Alloc(4);
      ASSERT_TRUE(memory_->WriteObj<uint32_t>(addr, 0xffffffff));
      event_bufs_[queues_[vsock::kEventQueue].Add({{addr, 4, true}})] = addr;
    }
    Notify(vsock::kEventQueue);
  }

  // The events the device delivered since the last call, by id.
  std::vector<uint32_t> Events() {
    std::vector<uint32_t> out;
    for (const UsedElem& e : queues_[vsock::kEventQueue].TakeUsed()) {
      EXPECT_EQ(e.len, 4u);
      uint32_t id = 0;
      EXPECT_TRUE(memory_->Read(event_bufs_.at(static_cast<uint16_t>(e.id)),
                                {reinterpret_cast<uint8_t*>(&id), sizeof(id)}));
      out.push_back(id);
    }
    return out;
  }

  std::map<uint16_t, uint64_t> event_bufs_;
};

TEST_F(VirtioVsockStateTest, CopyResetsTheTransportAndAcceptsANewHost) {
  Boot();
  PostEvents(8);
  UniqueFd old_host = HostConnect(1024);
  Send(OnConn(Op::kRw), "ping");
  EXPECT_EQ(ReadSome(old_host.get()), "ping");
  EXPECT_TRUE(Events().empty());

  ASSERT_TRUE(Restore());
  EXPECT_EQ(ReadSome(old_host.get()), "<EOF>");
  EXPECT_EQ(Events(), (std::vector<uint32_t>{0}));  // VIRTIO_VSOCK_EVENT_TRANSPORT_RESET
  EXPECT_TRUE(Receive(0, 50).empty());              // nothing about the dropped connection

  // A host connecting before the guest has handled the reset (Linux handles the event and
  // receive queues in separate work items) is announced only once it has: the guest says
  // so by giving an event buffer back.
  UniqueFd early = ConnectTo(uds_);
  ASSERT_EQ(write(early.get(), "CONNECT 1024\n", 13), 13);
  SyncWithDevice();
  EXPECT_TRUE(Receive(0, 50).empty());
  PostEvents(1);
  auto request = Receive();
  ASSERT_EQ(request.size(), 1u);
  EXPECT_EQ(request[0].header.op, static_cast<uint16_t>(Op::kRequest));
  PacketHeader refused = Guest(Op::kRst, request[0].header.src_port);
  refused.src_port = 1024;
  Send(refused);
  EXPECT_EQ(ReadSome(early.get()), "<EOF>");

  // The guest's listener on 1024 carries on; the host connects anew.
  UniqueFd host = HostConnect(1024);
  Send(OnConn(Op::kRw), "pong");
  EXPECT_EQ(ReadSome(host.get()), "pong");
  ASSERT_EQ(write(host.get(), "more", 4), 4);
  auto pkts = Receive();
  ASSERT_EQ(pkts.size(), 1u);
  EXPECT_EQ(pkts[0].payload, "more");
  EXPECT_TRUE(Events().empty());
}

TEST_F(VirtioVsockStateTest, ResetWaitsForAnEventBufferAndGoesFirst) {
  Boot();
  UniqueFd old_host = HostConnect(1024);
  ASSERT_TRUE(Restore());
  EXPECT_TRUE(Events().empty());

  // A host connecting now is not announced to the guest before the reset.
  UniqueFd host = ConnectTo(uds_);
  ASSERT_EQ(write(host.get(), "CONNECT 1024\n", 13), 13);
  SyncWithDevice();
  EXPECT_TRUE(Receive(0, 50).empty());

  PostEvents(1);
  EXPECT_EQ(Events(), (std::vector<uint32_t>{0}));
  EXPECT_TRUE(Receive(0, 50).empty()) << "announced before the guest handled the reset";
  PostEvents(1);  // the guest gives the buffer back: it has handled the reset
  auto pkts = Receive();
  ASSERT_EQ(pkts.size(), 1u);
  EXPECT_EQ(pkts[0].header.op, static_cast<uint16_t>(Op::kRequest));
  EXPECT_EQ(pkts[0].header.dst_port, 1024u);
  PostEvents(1);
  EXPECT_TRUE(Events().empty());  // one reset only
}

TEST_F(VirtioVsockStateTest, LoadStateRefusesDamagedState) {
  Boot();
  std::vector<uint8_t> device_state = transport_->device().SaveState();
  std::vector<uint8_t> saved = transport_->SaveState();
  ASSERT_TRUE(Restore());
  testing::ExpectRefusesDamaged(device_state, [&](std::span<const uint8_t> bytes) {
    return transport_->LoadState(testing::WithDeviceState(saved, device_state, bytes));
  });
}

}  // namespace
}  // namespace vessel::vmm
