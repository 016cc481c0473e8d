// vessel-vmm's device state decoders: the device states in a saved VM's state file may be
// corrupt or hostile, and each device's LoadState reads its own. Byte 0 picks the device,
// the rest is its state (device_state_setup.h); a virtio device loads behind its transport
// over the guest RAM its scene left, as a restored VM's devices load over its RAM.
//
// Invariants, any break of which aborts:
//   - what does not load is a kSnapshotFormat error, and loading touches nothing outside
//     the input and guest RAM (ASan);
//   - serial and i8042 load only exact encodings: what loads saves to the very bytes;
//   - what a loaded device saves loads into a fresh device, and reloading settles (see
//     Settle).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <span>
#include <vector>

#include "device_state_setup.h"
#include "invariant.h"
#include "vmm/core/state_codec.h"

namespace vessel::vmm::fuzz {
namespace {

using vessel::fuzz::Check;

// The host and, per device, the guest RAM its scene left (empty for serial and i8042).
struct World {
  DeviceHost host;
  std::vector<uint8_t> ram[kStateDeviceCount];

  static World& Get() {
    static World* world = Make();
    return *world;
  }

  static World* Make() {
    auto* world = new World;
    for (uint8_t device = 0; device < kStateDeviceCount; ++device) {
      world->ram[device] = RunScene(world->host, StateDevice{device}).ram;
    }
    // libFuzzer ends with exit(): take the sockets, the disk image and their directory along.
    std::atexit([] { delete &Get(); });
    return world;
  }
};

struct Area {
  uint64_t addr;
  uint64_t len;
};

// The guest RAM the driver owns (descriptor tables and available rings) of the ready queues
// of an active transport's saved state, as mmio_transport.cc encodes it.
std::vector<Area> DriverAreas(std::span<const uint8_t> transport_state) {
  StateReader in(transport_state, "transport state");
  // Version, status, feature selectors, driver features, QueueSel.
  static_cast<void>(in.ReadBytes(4 + 4 + 4 + 4 + 8 + 4, "registers"));
  bool active = in.ReadBool("active");
  static_cast<void>(in.ReadBytes(4 + 1, "InterruptStatus, needs reset"));
  auto queues = in.Read<uint16_t>("queue count");
  std::vector<Area> areas;
  for (uint16_t i = 0; i < queues && in.ok(); ++i) {
    auto size = in.Read<uint16_t>("size");
    bool ready = in.ReadBool("ready");
    auto desc = in.Read<uint64_t>("descriptor table");
    auto avail = in.Read<uint64_t>("available ring");
    static_cast<void>(in.Read<uint64_t>("used ring"));
    if (!active || !ready) continue;
    static_cast<void>(in.ReadBytes(2 + 2 + 1 + 1 + 8, "progress"));
    areas.push_back({desc, 16 * uint64_t{size}});
    areas.push_back({avail, 6 + 2 * uint64_t{size}});
  }
  Check(in.ok(), "a transport's own saved state parses");
  return areas;
}

bool AnyChanged(const std::vector<Area>& areas, std::span<const uint8_t> before,
                std::span<const uint8_t> after) {
  return std::ranges::any_of(areas, [&](const Area& area) {
    if (area.addr >= after.size()) return false;
    size_t len = std::min<uint64_t>(area.len, after.size() - area.addr);
    return std::memcmp(before.data() + area.addr, after.data() + area.addr, len) != 0;
  });
}

// Loading a saved state is idempotent but for what a load itself does to the guest: a
// loaded console completes the transmit chains the old session queued and delivers what
// control messages it can (among them PORT_OPEN 0 for a host that was connected); a loaded
// vsock device puts TRANSPORT_RESET in one event buffer, then takes the guest's transmit
// chains, as many as its limit on packets for the guest allows. So a load may save other
// bytes than it loaded, but only by taking chains the guest made available (or by breaking
// a queue, once), and no queue holds more than its size: reloading must settle within
// num_queues * (max_queue_size + 1) loads, and at once for serial and i8042. A load that
// writes into a descriptor table or available ring (the guest aimed a used ring or a buffer
// at one) makes new chains, so after it the state need only keep loading.
void Settle(World& w, StateDevice kind, std::vector<uint8_t> saved, bool transport,
            size_t max_loads) {
  std::span<uint8_t> ram = w.host.ram();
  std::vector<Area> areas = transport ? DriverAreas(saved) : std::vector<Area>{};
  std::vector<uint8_t> before;
  for (size_t load = 1;; ++load) {
    before.assign(ram.begin(), ram.end());
    auto device = w.host.Make(kind);
    Check(device->LoadState(saved).has_value(), "what a loaded device saves loads");
    std::vector<uint8_t> again = device->SaveState();
    if (again == saved || AnyChanged(areas, before, ram)) return;
    Check(load < max_loads, "reloading a saved state settles");
    saved = std::move(again);
  }
}

void FuzzDevice(StateDevice kind, std::span<const uint8_t> state) {
  World& w = World::Get();
  const std::vector<uint8_t>& image = w.ram[static_cast<uint8_t>(kind)];
  if (!image.empty()) std::ranges::copy(image, w.host.ram().begin());
  auto device = w.host.Make(kind);
  auto loaded = device->LoadState(state);
  if (!loaded) {
    Check(loaded.error().kind() == ErrorKind::kSnapshotFormat,
          "a state that does not load is a SnapshotFormat error");
    return;
  }
  std::vector<uint8_t> saved = device->SaveState();
  size_t max_loads = 1;
  auto* transport = dynamic_cast<virtio::MmioTransport*>(device.get());
  bool is_transport = transport != nullptr;
  if (is_transport) {
    max_loads =
        transport->device().num_queues() * (size_t{transport->device().max_queue_size()} + 1);
  } else {
    Check(std::ranges::equal(saved, state), "serial and i8042 save the very bytes they loaded");
  }
  // As in a restore, the device that saved is gone before a new one loads.
  device.reset();
  Settle(w, kind, std::move(saved), is_transport, max_loads);
}

}  // namespace
}  // namespace vessel::vmm::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace fz = vessel::vmm::fuzz;
  if (size == 0) return 0;
  auto kind = static_cast<fz::StateDevice>(data[0] % fz::kStateDeviceCount);
  fz::FuzzDevice(kind, {data + 1, size - 1});
  return 0;
}
