// Routes guest port and MMIO accesses to the device that owns the address.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace vessel::vmm {

// A range of port or MMIO space routed to a device. `first_offset` is the device offset of
// `base`, so one device can own several ranges (the i8042 has 0x60 and 0x64).
template <typename Device>
class Bus {
 public:
  void Insert(uint64_t base, uint64_t size, Device* device, uint64_t first_offset = 0) {
    entries_.push_back({base, size, device, first_offset});
  }
  // The device covering [addr, addr + len) and the offset of addr in it.
  [[nodiscard]] std::pair<Device*, uint64_t> Find(uint64_t addr, uint64_t len) const {
    for (const Entry& e : entries_) {
      if (addr >= e.base && addr - e.base < e.size && len <= e.size - (addr - e.base)) {
        return {e.device, e.first_offset + addr - e.base};
      }
    }
    return {nullptr, 0};
  }

 private:
  struct Entry {
    uint64_t base;
    uint64_t size;
    Device* device;
    uint64_t first_offset;
  };
  std::vector<Entry> entries_;
};

}  // namespace vessel::vmm
