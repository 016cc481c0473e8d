// virtio-vsock (virtio 1.x, 5.10) in userspace, with Firecracker's hybrid scheme for the
// host end: the device listens on a unix socket `uds_path`.
//
// Host-initiated: a host process connects to `uds_path` and writes "CONNECT <port>\n"; the
// device asks the guest for a connection to that port (OP_REQUEST from the host CID 2 and
// a host-side port of its choosing) and, once the guest accepts (OP_RESPONSE), answers
// "OK <host_side_port>\n" and relays bytes both ways. A refusal (OP_RST) closes the unix
// connection. Connections made before the guest's driver is up wait for it; one whose host
// hangs up before the guest answers is dropped: its OP_REQUEST is withdrawn if the guest has
// not received it yet, else reset, so the guest never accepts a connection nobody is on.
// Guest-initiated: OP_REQUEST to CID 2, port P connects to the unix socket
// "<uds_path>_<P>"; OP_RESPONSE if that works, else OP_RST.
//
// This file is the virtio side (queues, packets, relaying); muxer.h is the host side (unix
// sockets, CONNECT lines, ports) and connection.h one connection's state and credit, as
// Firecracker splits its vsock.
//
// Flow control is vsock's credit scheme: the device never sends the guest more than the
// guest's advertised buffer allows, and buffers at most kConnectionBuffer bytes per
// connection of what the guest sends, which is what it advertises.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "vessel/error.h"
#include "vmm/core/event_loop.h"
#include "vmm/devices/virtio/virtio_device.h"
// The limits on connections and their buffers, which callers and tests see here too.
#include "vmm/devices/vsock/connection.h"
#include "vmm/devices/vsock/muxer.h"

namespace vessel::vmm {

namespace vsock {
inline constexpr uint32_t kDeviceType = 19;
inline constexpr size_t kRxQueue = 0;
inline constexpr size_t kTxQueue = 1;
inline constexpr size_t kEventQueue = 2;
inline constexpr size_t kNumQueues = 3;
inline constexpr uint16_t kQueueSize = 256;
// The version of the device's saved state, which is only that: a loaded device drops every
// connection and tells the guest with a TRANSPORT_RESET event, delivered as soon as the
// guest has an event buffer posted and before anything else reaches the guest.
inline constexpr uint32_t kStateVersion = 1;
}  // namespace vsock

// Listens on `uds_path` (a stale socket there is replaced) and registers with `loop`,
// which must outlive the device and must not be running a handler of the device while it
// is destroyed. `guest_cid` must be at least 3 and below 2^32 - 1.
[[nodiscard]] Result<std::unique_ptr<virtio::VirtioDevice>> MakeVirtioVsock(
    EventLoop& loop, uint64_t guest_cid, const std::string& uds_path);

}  // namespace vessel::vmm
