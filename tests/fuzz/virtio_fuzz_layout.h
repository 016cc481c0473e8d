// Input layouts of the virtio fuzz targets, shared with make_corpus so the seeds follow
// them.
//
// fuzz_virtio_queue: bytes [0, kQueueConfigBytes) configure the queue, the rest is copied
// into a small guest RAM at kImageAddr:
//   byte 0: log2 of the queue size (taken modulo 10, so 1..512; the queue's max is 256);
//   byte 1: bit 0 set: the ring addresses are the little-endian u32s at bytes 4, 8, 12
//           (anything, to exercise the checks); clear: the fixed layout below;
//   byte 2: how many chains to return used before the driver "adds" more (0: all);
//   byte 3: how many times the driver republishes its available index (see the target).
//
// fuzz_vsock_packet: byte 0 says into how many buffers (1..8) the packet parser gets the
// whole input cut; the input from kVsockConfigBytes on is also copied into guest RAM at
// kImageAddr, where the device's transmit and receive queues live at the fixed addresses
// below.
//
// fuzz_blk_request: bytes [0, 8) are the disk's capacity in sectors for the request
// parser, which gets the input from kBlkConfigBytes on as a list of buffers, each a flags
// byte (bit 0: device-writable), a little-endian u24 length and, for a readable buffer,
// its bytes. The same bytes are copied into guest RAM at kImageAddr, where the virtio-blk
// device's request queue lives at the fixed addresses below, over a disk of kBlkDiskBytes.
#pragma once

#include <cstddef>
#include <cstdint>

namespace vessel::vmm::fuzz {

inline constexpr uint64_t kGuestRamBytes = 64 * 1024;
inline constexpr uint64_t kImageAddr = 0x1000;

inline constexpr size_t kQueueConfigBytes = 16;
inline constexpr uint16_t kQueueMaxSize = 256;
inline constexpr uint64_t kQueueDescAddr = 0x1000;
inline constexpr uint64_t kQueueAvailAddr = 0x2000;
inline constexpr uint64_t kQueueUsedAddr = 0x3000;
inline constexpr uint64_t kQueueDataAddr = 0x4000;

inline constexpr size_t kVsockConfigBytes = 16;
inline constexpr uint16_t kVsockQueueSize = 16;
inline constexpr uint64_t kVsockTxDesc = 0x1000;
inline constexpr uint64_t kVsockTxAvail = 0x1100;
inline constexpr uint64_t kVsockTxUsed = 0x1200;
inline constexpr uint64_t kVsockRxDesc = 0x1400;
inline constexpr uint64_t kVsockRxAvail = 0x1500;
inline constexpr uint64_t kVsockRxUsed = 0x1600;
inline constexpr uint64_t kVsockDataAddr = 0x2000;
// The guest's CID, and the one host port a unix socket listens on for guest connections.
inline constexpr uint64_t kVsockGuestCid = 3;
inline constexpr uint32_t kVsockListeningPort = 1024;

inline constexpr size_t kBlkConfigBytes = 16;
inline constexpr uint16_t kBlkQueueSize = 16;
inline constexpr uint64_t kBlkDesc = 0x1000;
inline constexpr uint64_t kBlkAvail = 0x1100;
inline constexpr uint64_t kBlkUsed = 0x1200;
inline constexpr uint64_t kBlkDataAddr = 0x2000;
// Sixteen sectors and a partial one.
inline constexpr uint64_t kBlkDiskBytes = 16 * 512 + 100;
inline constexpr uint8_t kBlkBufferWritable = 1;

}  // namespace vessel::vmm::fuzz
