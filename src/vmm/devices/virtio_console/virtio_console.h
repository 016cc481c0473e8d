// virtio-console (virtio 1.x, 5.3) with the multiport feature: port 0 is a console the
// guest may use or not (its output is discarded), port 1 is a named port carrying the
// guest agent's channel. The host end of port 1 is a unix socket the device listens on,
// one host connection at a time (later ones wait in the backlog until it closes), like
// QEMU's `-chardev socket,server=on,wait=off`.
//
// Flow control both ways, with no buffering in the VMM beyond one guest buffer:
// - host to guest: the socket is read only into receive buffers the guest has posted,
//   and only while the guest has the port open;
// - guest to host: a transmit buffer is written to the socket before the next one is
//   taken; while the socket would block, the guest's transmit queue waits. With no host
//   connected, guest output is dropped.
// The guest sees the port open (PORT_OPEN 1) while a host is connected and closed
// (POLLHUP on /dev/vportNpM) otherwise.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "vessel/error.h"
#include "vmm/core/event_loop.h"
#include "vmm/devices/virtio/virtio_device.h"

namespace vessel::vmm {

namespace console {
inline constexpr uint32_t kDeviceType = 3;
inline constexpr uint64_t kFeatureSize = 1ULL << 0;
inline constexpr uint64_t kFeatureMultiport = 1ULL << 1;
inline constexpr uint32_t kMaxPorts = 2;
inline constexpr uint32_t kAgentPortId = 1;

// Queues: port 0 rx/tx, control rx/tx (device to driver, driver to device), port 1 rx/tx.
inline constexpr size_t kPort0Rx = 0;
inline constexpr size_t kPort0Tx = 1;
inline constexpr size_t kControlRx = 2;
inline constexpr size_t kControlTx = 3;
inline constexpr size_t kPort1Rx = 4;
inline constexpr size_t kPort1Tx = 5;
inline constexpr size_t kNumQueues = 6;
inline constexpr uint16_t kQueueSize = 256;

// Control message events (struct virtio_console_control: le32 id, le16 event, le16 value).
inline constexpr uint16_t kDeviceReady = 0;
inline constexpr uint16_t kPortAdd = 1;
inline constexpr uint16_t kPortRemove = 2;
inline constexpr uint16_t kPortReady = 3;
inline constexpr uint16_t kConsolePort = 4;
inline constexpr uint16_t kResize = 5;
inline constexpr uint16_t kPortOpen = 6;
inline constexpr uint16_t kPortName = 7;
inline constexpr size_t kControlSize = 8;
// The longest port name the device announces.
inline constexpr size_t kMaxPortNameBytes = 64;
// The version of the device's saved state, which keeps the ports' open states, control
// messages not yet delivered and a transmit chain in flight. A loaded device has no host
// connected: the guest sees port 1 close (if a host was connected) and open again when a
// host connects.
inline constexpr uint32_t kStateVersion = 1;
}  // namespace console

// Listens on `agent_socket_path` (a stale socket there is replaced) and registers with
// `loop`, which must outlive the device and must not be running a handler of the device
// while it is destroyed (stop the loop first). Fails when the path is too long, the name
// empty or longer than kMaxPortNameBytes, or the socket cannot be bound.
[[nodiscard]] Result<std::unique_ptr<virtio::VirtioDevice>> MakeVirtioConsole(
    EventLoop& loop, const std::string& agent_socket_path, const std::string& port_name);

}  // namespace vessel::vmm
