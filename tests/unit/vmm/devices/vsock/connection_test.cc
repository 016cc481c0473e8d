// One connection's credit accounting and the CONNECT line, without sockets or queues.
#include "vmm/devices/vsock/connection.h"

#include <gtest/gtest.h>
#include <sys/epoll.h>

#include "vmm/devices/vsock/muxer.h"

namespace vessel::vmm::vsock {
namespace {

TEST(VsockConnection, PeerCreditIsWhatTheGuestHasRoomForAcrossWraparound) {
  Connection c;
  c.UpdatePeerCredit({.buf_alloc = 1000, .fwd_cnt = 0xffff'fff0});
  c.tx_cnt = 0xffff'fff0;
  EXPECT_EQ(c.PeerCredit(), 1000u);
  c.tx_cnt += 400;  // wraps
  EXPECT_EQ(c.PeerCredit(), 600u);
  c.tx_cnt += 600;
  EXPECT_EQ(c.PeerCredit(), 0u);
  c.credit_requested = true;
  c.UpdatePeerCredit({.buf_alloc = 1000, .fwd_cnt = 0xffff'fff0 + 1000});
  EXPECT_EQ(c.PeerCredit(), 1000u);
  EXPECT_FALSE(c.credit_requested);
}

TEST(VsockConnection, BuffersAtMostWhatItAdvertises) {
  Connection c;
  EXPECT_TRUE(c.FitsBuffer(kConnectionBuffer));
  c.rx_cnt = 100;
  EXPECT_FALSE(c.FitsBuffer(kConnectionBuffer));
  c.fwd_cnt = 100;
  EXPECT_TRUE(c.FitsBuffer(kConnectionBuffer));
  EXPECT_EQ(c.HeaderFor(3, Op::kRw).buf_alloc, kConnectionBuffer);
}

TEST(VsockConnection, TheOkReplyIsNotCountedAsForwardedGuestBytes) {
  Connection c;
  c.QueueToHost("OK 7\n", /*is_reply=*/true);
  c.QueueToHost("guest", /*is_reply=*/false);
  c.Forwarded(3);
  EXPECT_EQ(c.fwd_cnt, 0u);
  c.Forwarded(4);
  EXPECT_EQ(c.fwd_cnt, 2u);
  EXPECT_EQ(c.pending_to_host(), 3u);
  c.Forwarded(3);
  c.CompactToHost();
  EXPECT_TRUE(c.to_host.empty());
  EXPECT_EQ(c.fwd_cnt, 5u);
  EXPECT_FALSE(c.CreditUpdateDue());
  c.fwd_cnt += kCreditUpdateThreshold;
  EXPECT_TRUE(c.CreditUpdateDue());
}

TEST(VsockConnection, WaitsForWhatItsStateNeeds) {
  Connection c;
  EXPECT_EQ(c.WantedEvents(true), uint32_t{EPOLLIN | EPOLLRDHUP});
  c.state = Connection::State::kConnecting;
  EXPECT_EQ(c.WantedEvents(true), uint32_t{EPOLLRDHUP});
  c.state = Connection::State::kConnected;
  EXPECT_EQ(c.WantedEvents(true), 0u);  // no credit yet
  c.peer_buf_alloc = 10;
  EXPECT_EQ(c.WantedEvents(true), uint32_t{EPOLLIN});
  EXPECT_EQ(c.WantedEvents(false), 0u);
  c.QueueToHost("x", false);
  EXPECT_EQ(c.WantedEvents(false), uint32_t{EPOLLOUT});
}

TEST(VsockMuxer, ParsesOnlyWellFormedConnectLines) {
  EXPECT_EQ(ParseConnectLine("CONNECT 1024\n"), 1024u);
  EXPECT_EQ(ParseConnectLine("CONNECT 4294967295\n"), 4294967295u);
  for (const char* bad : {"CONNECT 1024", "CONNECT \n", "CONNECT -1\n", "CONNECT 4294967296\n",
                          "CONNECT 1 2\n", "connect 1\n", "CONNECT 0x10\n"}) {
    EXPECT_FALSE(ParseConnectLine(bad)) << bad;
  }
}

}  // namespace
}  // namespace vessel::vmm::vsock
