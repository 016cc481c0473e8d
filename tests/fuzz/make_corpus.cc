// Writes the seed corpora of the fuzz targets with the real encoders, so the seeds follow
// the wire format when it changes. Usage: make_corpus DIR (DIR is tests/fuzz/corpus).
//
// A wire-format seed is one split byte (see frame_fuzzer.h) and a stream of frames: a
// typical conversation, so the fuzzer starts from well-formed frames of every type. A
// virtio seed is a guest RAM image laid out as virtio_fuzz_layout.h says: well-formed
// chains and packets, and the classic bad ones. A device state seed is the byte that picks
// the device and a state its scene (device_state_setup.h) saved.
#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <span>
#include <string>
#include <vector>

#include "device_state_setup.h"
#include "protocol/wire.h"
#include "virtio_fuzz_layout.h"
#include "vmm/arch/x86/machine_state.h"
#include "vmm/devices/virtio/queue.h"
#include "vmm/devices/virtio_blk/blk_request.h"
#include "vmm/devices/vsock/vsock_packet.h"

namespace vessel::protocol {
namespace {

using Bytes = std::vector<uint8_t>;

Bytes Seed(uint8_t split, std::initializer_list<Bytes> frames) {
  Bytes seed = {split};
  for (const Bytes& frame : frames) seed.insert(seed.end(), frame.begin(), frame.end());
  return seed;
}

Bytes Text(std::string_view s) { return Bytes(s.begin(), s.end()); }

// Header bytes the reader must reject: an unknown type, an oversize payload.
Bytes BadHeader(uint8_t type, uint32_t payload_size) {
  Bytes b(kHeaderSize, 0);
  for (size_t i = 0; i < 4; ++i) b[i] = static_cast<uint8_t>(payload_size >> (8 * i));
  b[4] = type;
  return b;
}

ExecRequest Exec(std::vector<std::string> argv, bool stdin_pipe) {
  ExecRequest req;
  req.argv = std::move(argv);
  req.env = {"PATH=/usr/bin:/bin", "HOME=/root"};
  req.cwd = "/tmp";
  req.timeout_ms = 5000;
  req.output_cap = 1 << 20;
  req.stdin_pipe = stdin_pipe;
  req.window = 65536;
  return req;
}

FileOp Op(FileOpKind kind, std::string path, std::string target = {}) {
  FileOp op;
  op.kind = kind;
  op.path = std::move(path);
  op.target = std::move(target);
  return op;
}

std::vector<std::pair<std::string, Bytes>> HostSeeds() {
  Bytes out = Text("hello\n");
  return {
      {"hello", Seed(0, {EncodeHello({kVersion, "vessel-agent 0.1.0"})})},
      {"exec_output", Seed(0, {EncodeStarted(1, {42}), EncodeOutput(1, Stream::kStdout, out),
                               EncodeOutput(1, Stream::kStderr, Text("warning\n")),
                               EncodeExited(1, {ExitHow::kExited, 0, false, false})})},
      {"exec_output_split", Seed(7, {EncodeStarted(1, {42}), EncodeOutput(1, Stream::kStdout, out),
                                     EncodeExited(1, {ExitHow::kExited, 3, false, false})})},
      {"exec_signaled",
       Seed(3, {EncodeStarted(2, {100}), EncodeExited(2, {ExitHow::kSignaled, 9, true, true})})},
      {"exec_timed_out", Seed(0, {EncodeExited(3, {ExitHow::kTimedOut, 9, false, true})})},
      {"exec_stdin_credit", Seed(5, {EncodeStarted(4, {7}), EncodeCredit(4, {Stream::kStdin, 4096}),
                                     EncodeOutput(4, Stream::kStdout, out), EncodeExited(4, {})})},
      {"error", Seed(0, {EncodeError(5, {2, "/no/such", "command: No such file or directory"})})},
      {"error_protocol", Seed(1, {EncodeError(0, {71, "", "malformed exec request: truncated"})})},
      {"stat",
       Seed(0, {EncodeFileInfo(6, {FileType::kRegular, 0644, 12, 1700000000, ""}), EncodeDone(6)})},
      {"list_dir",
       Seed(2, {EncodeFileInfo(7, {FileType::kDirectory, 0755, 4096, 1700000000, "etc"}),
                EncodeFileInfo(7, {FileType::kSymlink, 0777, 7, -1, "bin"}),
                EncodeFileInfo(7, {FileType::kOther, 0600, 0, 0, "null"}), EncodeDone(7)})},
      {"read_file", Seed(9, {EncodeFileInfo(8, {FileType::kRegular, 0600, 11, 5, ""}),
                             EncodeFileData(8, Text("hello ")), EncodeFileData(8, Text("world")),
                             EncodeDone(8)})},
      {"write_file", Seed(0, {EncodeCredit(9, {Stream::kFile, 65536}), EncodeDone(9)})},
      {"pong", Seed(0, {EncodePong(10)})},
      {"net", Seed(6, {EncodeNetOpen(kAgentIdBit | 1),
                       EncodeNetData(kAgentIdBit | 1, Text("CONNECT example.com:443 HTTP/1.1\r\n"
                                                           "Host: example.com:443\r\n\r\n")),
                       EncodeCredit(kAgentIdBit | 1, {Stream::kNet, 65536}),
                       EncodeNetData(kAgentIdBit | 1, {}), EncodeNetClose(kAgentIdBit | 1)})},
      {"quiesce_resume", Seed(2, {EncodeOutput(1, Stream::kStdout, out), EncodeDone(13),
                                  EncodeHello(14, {kVersion, "vessel-agent 0.1.0"}),
                                  EncodeExited(1, {ExitHow::kExited, 0, false, false})})},
      {"bad_type", Seed(0, {EncodePong(11), BadHeader(kLastMessageType + 1, 0)})},
      {"bad_size", Seed(4, {EncodeDone(12), BadHeader(3, kMaxPayload + 1)})},
      {"truncated", Seed(0, {EncodeHello({kVersion, "vessel-agent"}), Bytes{40, 0, 0, 0, 3}})},
  };
}

std::vector<std::pair<std::string, Bytes>> AgentSeeds() {
  return {
      {"exec", Seed(0, {EncodeExec(1, Exec({"uname", "-a"}, false))})},
      {"exec_split", Seed(11, {EncodeExec(1, Exec({"/bin/sh", "-c", "echo hi >&2"}, false))})},
      {"exec_stdin",
       Seed(6, {EncodeExec(2, Exec({"cat"}, true)), EncodeStdin(2, Text("line one\n")),
                EncodeStdin(2, Text("line two\n")), EncodeStdin(2, {})})},
      {"exec_credit_signal",
       Seed(0, {EncodeExec(3, Exec({"yes"}, false)), EncodeCredit(3, {Stream::kStdout, 65536}),
                EncodeCredit(3, {Stream::kStderr, 1}), EncodeSignal(3, 15)})},
      {"exec_terminal_resize",
       Seed(3, {EncodeExec(18,
                           [] {
                             ExecRequest request = Exec({"sh"}, true);
                             request.terminal = TerminalSize{.rows = 24, .cols = 80};
                             return request;
                           }()),
                EncodeStdin(18, Text("stty size\n")), EncodeResize(18, {.rows = 50, .cols = 132}),
                EncodeStdin(18, Text("\x03"))})},
      {"ping", Seed(0, {EncodePing(4)})},
      {"stat", Seed(0, {EncodeFileOp(5, Op(FileOpKind::kStat, "/etc/hostname"))})},
      {"list_dir", Seed(1, {EncodeFileOp(6, Op(FileOpKind::kListDir, "/etc"))})},
      {"make_dir", Seed(0, {EncodeFileOp(7,
                                         [] {
                                           FileOp op = Op(FileOpKind::kMakeDir, "/tmp/a/b/c");
                                           op.mode = 0700;
                                           op.flags = kFlagParents;
                                           return op;
                                         }())})},
      {"remove", Seed(2, {EncodeFileOp(8,
                                       [] {
                                         FileOp op = Op(FileOpKind::kRemove, "/tmp/a");
                                         op.flags = kFlagRecursive;
                                         return op;
                                       }())})},
      {"rename", Seed(0, {EncodeFileOp(9, Op(FileOpKind::kRename, "/tmp/x", "/tmp/y"))})},
      {"read_file", Seed(3, {EncodeFileOp(10, Op(FileOpKind::kReadFile, "/etc/os-release")),
                             EncodeCredit(10, {Stream::kFile, 65536})})},
      {"write_file", Seed(8, {EncodeFileOp(11, Op(FileOpKind::kWriteFile, "/tmp/out.txt")),
                              EncodeFileData(11, Text("contents\n")), EncodeFileData(11, {})})},
      {"quiesce_resume",
       Seed(4, {EncodeQuiesce(14),
                EncodeResume(15, {true, 1'700'000'000'123'456'789, Bytes(64, 0xa5)})})},
      {"resume_parent", Seed(0, {EncodeQuiesce(16), EncodeResume(17, {false, 42, {}})})},
      {"net",
       Seed(5, {EncodeNetData(kAgentIdBit | 1, Text("HTTP/1.1 200 Connection established\r\n\r\n")),
                EncodeCredit(kAgentIdBit | 1, {Stream::kNet, 4096}),
                EncodeNetData(kAgentIdBit | 1, {}), EncodeNetClose(kAgentIdBit | 1)})},
      {"bad_type", Seed(0, {EncodePing(12), BadHeader(0, 0)})},
      {"truncated", Seed(5, {EncodePing(13), Bytes{9, 0, 0, 0, 2, 0, 0}})},
  };
}

// A guest RAM image as the virtio targets take it: a config block, then RAM from
// kImageAddr on.
class GuestImage {
 public:
  explicit GuestImage(size_t config_bytes) : config_(config_bytes, 0) {}

  void Config(size_t at, uint8_t value) { config_[at] = value; }
  template <typename T>
  void Put(uint64_t addr, T value) {
    PutBytes(addr, {reinterpret_cast<const uint8_t*>(&value), sizeof(T)});
  }
  void PutBytes(uint64_t addr, std::span<const uint8_t> bytes) {
    size_t at = static_cast<size_t>(addr - vmm::fuzz::kImageAddr);
    if (ram_.size() < at + bytes.size()) ram_.resize(at + bytes.size());
    std::copy(bytes.begin(), bytes.end(), ram_.begin() + static_cast<std::ptrdiff_t>(at));
  }
  void Desc(uint64_t table, uint16_t index, uint64_t addr, uint32_t len, uint16_t flags,
            uint16_t next) {
    uint64_t at = table + 16 * uint64_t{index};
    Put(at, addr);
    Put(at + 8, len);
    Put(at + 12, flags);
    Put(at + 14, next);
  }
  // Makes `heads` available in the ring at `avail`.
  void Avail(uint64_t avail, std::initializer_list<uint16_t> heads) {
    uint16_t i = 0;
    for (uint16_t head : heads) Put(avail + 4 + 2 * uint64_t{i++}, head);
    Put(avail + 2, i);
  }
  Bytes Seed() const {
    Bytes out = config_;
    out.insert(out.end(), ram_.begin(), ram_.end());
    return out;
  }

 private:
  Bytes config_;
  Bytes ram_;
};

std::vector<std::pair<std::string, Bytes>> QueueSeeds() {
  using namespace vmm::fuzz;
  using vmm::virtio::kDescNext;
  using vmm::virtio::kDescWrite;
  std::vector<std::pair<std::string, Bytes>> seeds;
  {
    GuestImage g(kQueueConfigBytes);
    g.Config(0, 4);  // 16 entries
    g.Desc(kQueueDescAddr, 0, kQueueDataAddr, 64, kDescNext, 1);
    g.Desc(kQueueDescAddr, 1, kQueueDataAddr + 64, 128, kDescWrite, 0);
    g.Desc(kQueueDescAddr, 2, kQueueDataAddr + 256, 4096, kDescWrite, 0);
    g.Avail(kQueueAvailAddr, {0, 2});
    g.Put<uint8_t>(kQueueUsedAddr + 0x100, 0);  // RAM reaches past the used ring
    seeds.emplace_back("two_chains", g.Seed());
  }
  {
    GuestImage g(kQueueConfigBytes);
    g.Config(0, 3);
    g.Desc(kQueueDescAddr, 0, kQueueDataAddr, 16, kDescNext, 1);
    g.Desc(kQueueDescAddr, 1, kQueueDataAddr, 16, kDescNext, 0);  // loop
    g.Desc(kQueueDescAddr, 2, kQueueDataAddr, 16, kDescNext, 9);  // next out of range
    g.Desc(kQueueDescAddr, 3, 0xc0000000, 16, 0, 0);              // MMIO hole
    g.Desc(kQueueDescAddr, 4, kQueueDataAddr, 0xffffffff, 0, 0);  // huge
    g.Desc(kQueueDescAddr, 5, kQueueDataAddr, 0, kDescWrite, 0);  // empty
    g.Avail(kQueueAvailAddr, {0, 2, 3, 4, 5, 1});
    g.Put<uint8_t>(kQueueUsedAddr + 0x100, 0);
    seeds.emplace_back("bad_chains", g.Seed());
  }
  {
    GuestImage g(kQueueConfigBytes);
    g.Config(0, 2);
    g.Config(2, 2);  // hold two chains back
    g.Config(3, 3);  // republish three times
    for (uint16_t i = 0; i < 4; ++i) g.Desc(kQueueDescAddr, i, kQueueDataAddr + 32 * i, 32, 0, 0);
    g.Avail(kQueueAvailAddr, {0, 1, 2, 3});
    g.Put<uint8_t>(kQueueUsedAddr + 0x100, 0);
    seeds.emplace_back("full_ring_replayed", g.Seed());
  }
  {
    GuestImage g(kQueueConfigBytes);
    g.Config(0, 4);
    g.Config(1, 1);  // explicit addresses
    for (size_t i = 0; i < 4; ++i) g.Config(4 + i, static_cast<uint8_t>(kQueueDescAddr >> (8 * i)));
    for (size_t i = 0; i < 4; ++i)
      g.Config(8 + i, static_cast<uint8_t>(kQueueAvailAddr >> (8 * i)));
    for (size_t i = 0; i < 4; ++i)
      g.Config(12 + i, static_cast<uint8_t>(kQueueUsedAddr >> (8 * i)));
    g.Desc(kQueueDescAddr, 0, kQueueDataAddr, 8, 0, 0);
    g.Avail(kQueueAvailAddr, {0});
    g.Put<uint8_t>(kQueueUsedAddr + 0x100, 0);
    seeds.emplace_back("explicit_addresses", g.Seed());
  }
  {
    GuestImage g(kQueueConfigBytes);
    g.Config(0, 4);
    g.Put<uint16_t>(kQueueAvailAddr + 2, 40);  // runs ahead of a 16-entry queue
    g.Put<uint8_t>(kQueueUsedAddr + 0x100, 0);
    seeds.emplace_back("avail_runs_ahead", g.Seed());
  }
  return seeds;
}

std::vector<std::pair<std::string, Bytes>> VsockSeeds() {
  using namespace vmm::fuzz;
  using vmm::virtio::kDescNext;
  using vmm::virtio::kDescWrite;
  namespace vs = vmm::vsock;
  auto header = [](vs::Op op, uint32_t len, uint32_t dst_port = kVsockListeningPort) {
    return vs::EncodeHeader({.src_cid = kVsockGuestCid,
                             .dst_cid = vs::kHostCid,
                             .src_port = 40000,
                             .dst_port = dst_port,
                             .len = len,
                             .type = vs::kTypeStream,
                             .op = static_cast<uint16_t>(op),
                             .flags = 0,
                             .buf_alloc = 65536,
                             .fwd_cnt = 0});
  };
  // Receive buffers for the device's answers.
  auto post_rx = [](GuestImage& g) {
    for (uint16_t i = 0; i < 8; ++i) {
      g.Desc(kVsockRxDesc, i, kVsockDataAddr + 0x4000 + 0x200 * uint64_t{i}, 0x200, kDescWrite, 0);
    }
    g.Avail(kVsockRxAvail, {0, 1, 2, 3, 4, 5, 6, 7});
    g.Put<uint8_t>(kVsockDataAddr + 0x6000, 0);
  };
  // Packets, each as a header buffer and (when it has one) a payload buffer.
  auto put_packets =
      [](GuestImage& g,
         std::initializer_list<std::pair<std::array<uint8_t, 44>, std::string>> pkts) {
        uint16_t desc = 0;
        uint64_t data = kVsockDataAddr;
        std::vector<uint16_t> heads;
        for (const auto& [hdr, payload] : pkts) {
          heads.push_back(desc);
          g.PutBytes(data, hdr);
          bool more = !payload.empty();
          g.Desc(kVsockTxDesc, desc, data, 44, more ? kDescNext : 0,
                 static_cast<uint16_t>(desc + 1));
          data += 64;
          ++desc;
          if (more) {
            g.PutBytes(data, {reinterpret_cast<const uint8_t*>(payload.data()), payload.size()});
            g.Desc(kVsockTxDesc, desc, data, static_cast<uint32_t>(payload.size()), 0, 0);
            data += (payload.size() + 63) & ~size_t{63};
            ++desc;
          }
        }
        uint16_t i = 0;
        for (uint16_t head : heads) g.Put(kVsockTxAvail + 4 + 2 * uint64_t{i++}, head);
        g.Put(kVsockTxAvail + 2, i);
      };
  std::vector<std::pair<std::string, Bytes>> seeds;
  {
    GuestImage g(kVsockConfigBytes);
    post_rx(g);
    put_packets(g, {{header(vs::Op::kRequest, 0), ""},
                    {header(vs::Op::kRw, 5), "hello"},
                    {header(vs::Op::kCreditRequest, 0), ""},
                    {header(vs::Op::kCreditUpdate, 0), ""},
                    {header(vs::Op::kShutdown, 0), ""},
                    {header(vs::Op::kRst, 0), ""}});
    seeds.emplace_back("connect_send_close", g.Seed());
  }
  {
    GuestImage g(kVsockConfigBytes);
    post_rx(g);
    put_packets(g, {{header(vs::Op::kRequest, 0, 9999), ""},  // nobody listens
                    {header(vs::Op::kRw, 3, 5), "abc"},       // no such connection
                    {header(vs::Op::kResponse, 0, 6), ""},
                    {header(static_cast<vs::Op>(42), 0), ""},
                    {header(vs::Op::kRw, 9), "short"}});  // len disagrees
    seeds.emplace_back("refusals", g.Seed());
  }
  {
    // A header split over three buffers.
    GuestImage g(kVsockConfigBytes);
    post_rx(g);
    auto hdr = header(vs::Op::kRequest, 0);
    g.PutBytes(kVsockDataAddr, std::span<const uint8_t>(hdr).subspan(0, 10));
    g.PutBytes(kVsockDataAddr + 64, std::span<const uint8_t>(hdr).subspan(10, 30));
    g.PutBytes(kVsockDataAddr + 128, std::span<const uint8_t>(hdr).subspan(40));
    g.Desc(kVsockTxDesc, 0, kVsockDataAddr, 10, kDescNext, 1);
    g.Desc(kVsockTxDesc, 1, kVsockDataAddr + 64, 30, kDescNext, 2);
    g.Desc(kVsockTxDesc, 2, kVsockDataAddr + 128, 4, 0, 0);
    g.Avail(kVsockTxAvail, {0});
    seeds.emplace_back("split_header", g.Seed());
  }
  return seeds;
}

std::vector<std::pair<std::string, Bytes>> BlkSeeds() {
  using namespace vmm::fuzz;
  using vmm::virtio::kDescNext;
  using vmm::virtio::kDescWrite;
  namespace blk = vmm::blk;
  // Requests as Linux lays them out: header, data, status, a descriptor each.
  struct Req {
    uint32_t type;
    uint64_t sector;
    uint32_t data_len;
  };
  auto put_requests = [](GuestImage& g, std::initializer_list<Req> reqs) {
    uint16_t desc = 0;
    uint64_t data = kBlkDataAddr;
    std::vector<uint16_t> heads;
    for (const Req& r : reqs) {
      heads.push_back(desc);
      g.PutBytes(data, blk::EncodeHeader(r.type, r.sector));
      g.Desc(kBlkDesc, desc, data, blk::kHeaderSize, kDescNext, static_cast<uint16_t>(desc + 1));
      data += 64;
      ++desc;
      if (r.data_len > 0) {
        bool device_writes = r.type == blk::kTypeIn || r.type == blk::kTypeGetId;
        g.Desc(kBlkDesc, desc, data, r.data_len,
               static_cast<uint16_t>(kDescNext | (device_writes ? kDescWrite : 0)),
               static_cast<uint16_t>(desc + 1));
        data += (r.data_len + 63) & ~uint64_t{63};
        ++desc;
      }
      g.Desc(kBlkDesc, desc, data, 1, kDescWrite, 0);
      data += 64;
      ++desc;
    }
    uint16_t i = 0;
    for (uint16_t head : heads) g.Put(kBlkAvail + 4 + 2 * uint64_t{i++}, head);
    g.Put(kBlkAvail + 2, i);
    g.Put<uint8_t>(data, 0);  // RAM reaches past the last buffer
  };
  constexpr uint64_t kSectors = (kBlkDiskBytes + 511) / 512;
  std::vector<std::pair<std::string, Bytes>> seeds;
  {
    GuestImage g(kBlkConfigBytes);
    put_requests(g, {{blk::kTypeIn, 3, 1024},
                     {blk::kTypeGetId, 0, blk::kIdBytes},
                     {blk::kTypeIn, kSectors - 1, 512},  // the partial last sector
                     {blk::kTypeOut, 0, 512}});
    seeds.emplace_back("read_get_id_write", g.Seed());
  }
  {
    GuestImage g(kBlkConfigBytes);
    put_requests(g, {{blk::kTypeIn, kSectors, 512},                // past the end
                     {blk::kTypeIn, 0, 100},                       // not whole sectors
                     {blk::kTypeIn, 0xffff'ffff'ffff'fff0, 4096},  // overflowing
                     {blk::kTypeFlush, 0, 0},                      // not offered
                     {blk::kTypeDiscard, 0, 16},                   // not offered
                     {0x7777, 1, 0}});                             // unknown
    seeds.emplace_back("refusals", g.Seed());
  }
  {
    // A header split over two buffers, data and status sharing one; a chain without a
    // status byte; a read whose data the device would have to read.
    GuestImage g(kBlkConfigBytes);
    auto hdr = blk::EncodeHeader(blk::kTypeIn, 1);
    g.PutBytes(kBlkDataAddr, std::span<const uint8_t>(hdr).subspan(0, 6));
    g.PutBytes(kBlkDataAddr + 64, std::span<const uint8_t>(hdr).subspan(6));
    g.Desc(kBlkDesc, 0, kBlkDataAddr, 6, kDescNext, 1);
    g.Desc(kBlkDesc, 1, kBlkDataAddr + 64, 10, kDescNext, 2);
    g.Desc(kBlkDesc, 2, kBlkDataAddr + 128, 512 + 1, kDescWrite, 0);
    g.PutBytes(kBlkDataAddr + 0x400, blk::EncodeHeader(blk::kTypeIn, 0));
    g.Desc(kBlkDesc, 3, kBlkDataAddr + 0x400, blk::kHeaderSize, 0, 0);
    g.PutBytes(kBlkDataAddr + 0x440, blk::EncodeHeader(blk::kTypeIn, 0));
    g.Desc(kBlkDesc, 4, kBlkDataAddr + 0x440, blk::kHeaderSize, kDescNext, 5);
    g.Desc(kBlkDesc, 5, kBlkDataAddr + 0x480, 512, kDescNext, 6);
    g.Desc(kBlkDesc, 6, kBlkDataAddr + 0x700, 1, kDescWrite, 0);
    g.Avail(kBlkAvail, {0, 3, 4});
    g.Put<uint8_t>(kBlkDataAddr + 0x800, 0);
    seeds.emplace_back("any_layout_and_bad_chains", g.Seed());
  }
  {
    // For the parser: a read of 8 sectors at sector 2 of a 2048-sector disk, as a list of
    // buffers (flags, u24 length, readable bytes).
    Bytes seed(kBlkConfigBytes, 0);
    uint64_t capacity = 2048;
    std::memcpy(seed.data(), &capacity, sizeof(capacity));
    auto buffer = [&seed](uint8_t flags, uint32_t len) {
      seed.push_back(flags);
      for (int i = 0; i < 3; ++i) seed.push_back(static_cast<uint8_t>(len >> (8 * i)));
    };
    auto hdr = blk::EncodeHeader(blk::kTypeIn, 2);
    buffer(0, blk::kHeaderSize);
    seed.insert(seed.end(), hdr.begin(), hdr.end());
    buffer(kBlkBufferWritable, 4096);
    buffer(kBlkBufferWritable, 1);
    seeds.emplace_back("parser_read", seed);
  }
  return seeds;
}

// vessel-vmm machine states: one vCPU and no device, and two vCPUs with MSRs and devices.
std::vector<std::pair<std::string, Bytes>> MachineStateSeeds() {
  std::vector<std::pair<std::string, Bytes>> seeds;
  vmm::MachineState state;
  state.clock.clock = 123456789;
  vmm::VcpuState vcpu;
  vcpu.regs.rip = 0x1000000;
  vcpu.xsave.assign(sizeof(kvm_xsave), 0);
  state.vcpus.push_back(vcpu);
  seeds.emplace_back("one_vcpu", vmm::EncodeMachineState(state).value());
  vcpu.msrs = {{.index = 0x10, .reserved = 0, .data = 1 << 20},
               {.index = 0x4b564d01, .reserved = 0, .data = 0x2001}};
  state.vcpus.push_back(vcpu);
  state.devices = {{"serial", {0, 1, 2, 3}}, {"virtio-vsock", Bytes(64, 7)}};
  seeds.emplace_back("two_vcpus_devices", vmm::EncodeMachineState(state).value());
  return seeds;
}

// Each device's states as its scene saves them, behind the byte that picks the device.
std::vector<std::pair<std::string, Bytes>> DeviceStateSeeds() {
  std::vector<std::pair<std::string, Bytes>> seeds;
  vmm::fuzz::DeviceHost host;
  for (uint8_t device = 0; device < vmm::fuzz::kStateDeviceCount; ++device) {
    for (auto& [name, state] : vmm::fuzz::RunScene(host, vmm::fuzz::StateDevice{device}).states) {
      Bytes seed = {device};
      seed.insert(seed.end(), state.begin(), state.end());
      seeds.emplace_back(name, std::move(seed));
    }
  }
  return seeds;
}

bool WriteAll(const std::filesystem::path& dir,
              const std::vector<std::pair<std::string, Bytes>>& seeds) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    std::fprintf(stderr, "make_corpus: %s: %s\n", dir.c_str(), ec.message().c_str());
    return false;
  }
  for (const auto& [name, bytes] : seeds) {
    std::ofstream file(dir / name, std::ios::binary | std::ios::trunc);
    file.write(reinterpret_cast<const char*>(bytes.data()),
               static_cast<std::streamsize>(bytes.size()));
    if (!file) {
      std::fprintf(stderr, "make_corpus: cannot write %s\n", (dir / name).c_str());
      return false;
    }
  }
  return true;
}

}  // namespace
}  // namespace vessel::protocol

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_corpus DIR\n");
    return 2;
  }
  std::filesystem::path dir = argv[1];
  bool ok =
      vessel::protocol::WriteAll(dir / "fuzz_host_frames", vessel::protocol::HostSeeds()) &&
      vessel::protocol::WriteAll(dir / "fuzz_agent_frames", vessel::protocol::AgentSeeds()) &&
      vessel::protocol::WriteAll(dir / "fuzz_virtio_queue", vessel::protocol::QueueSeeds()) &&
      vessel::protocol::WriteAll(dir / "fuzz_vsock_packet", vessel::protocol::VsockSeeds()) &&
      vessel::protocol::WriteAll(dir / "fuzz_blk_request", vessel::protocol::BlkSeeds()) &&
      vessel::protocol::WriteAll(dir / "fuzz_machine_state",
                                 vessel::protocol::MachineStateSeeds()) &&
      vessel::protocol::WriteAll(dir / "fuzz_device_state", vessel::protocol::DeviceStateSeeds());
  return ok ? 0 : 1;
}
