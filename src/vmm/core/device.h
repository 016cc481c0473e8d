// What the VMM core sees of a device: a window of MMIO or port I/O space, and a way for the
// device to raise its interrupt. Accesses come from vCPU threads, possibly several at once;
// each device serialises them itself.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "vessel/error.h"

namespace vessel::vmm {

class MmioDevice {
 public:
  virtual ~MmioDevice() = default;
  // `offset` is from the device's base; data.size() is 1, 2, 4 or 8. Reads fill `data`
  // (little-endian); an access the device does not implement reads as zeros and ignores
  // writes.
  virtual void MmioRead(uint64_t offset, std::span<uint8_t> data) = 0;
  virtual void MmioWrite(uint64_t offset, std::span<const uint8_t> data) = 0;
};

class PioDevice {
 public:
  virtual ~PioDevice() = default;
  // `offset` is from the device's first port; data.size() is 1, 2 or 4.
  virtual void PioRead(uint16_t offset, std::span<uint8_t> data) = 0;
  virtual void PioWrite(uint16_t offset, std::span<const uint8_t> data) = 0;
};

// An edge-triggered interrupt line of the in-kernel irqchip (an irqfd in the VMM; a
// counter in unit tests). Safe to call from any thread.
class Interrupt {
 public:
  virtual ~Interrupt() = default;
  virtual void Trigger() = 0;
};

// A device whose state a snapshot keeps. Both calls come from the control thread while
// every vCPU is parked and the I/O thread is held, so nothing else touches the device.
class StatefulDevice {
 public:
  virtual ~StatefulDevice() = default;
  // The device's state, in its own encoding, which starts with its version.
  [[nodiscard]] virtual std::vector<uint8_t> SaveState() = 0;
  // Loads what SaveState() of a device created with the same configuration gave, before
  // the VM first runs; kSnapshotFormat, naming what is wrong, for anything else.
  [[nodiscard]] virtual Result<void> LoadState(std::span<const uint8_t> bytes) = 0;
};

}  // namespace vessel::vmm
