// PVH boot of an uncompressed ELF vmlinux: the kernel's PT_LOAD segments go to their
// physical addresses, and the kernel starts at its XEN_ELFNOTE_PHYS32_ENTRY in 32-bit
// protected mode with EBX pointing at an hvm_start_info that carries the memory map, the
// command line and the initramfs.
//
// The layout of guest-physical memory is a pure function of the guest's size and the
// sizes of what is loaded (PlanBootLayout), so it is unit tested for every memory size.
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "vessel/error.h"
#include "vmm/core/guest_memory.h"

namespace vessel::vmm {

// Fixed guest-physical addresses below 1 MiB.
inline constexpr uint64_t kBootGdtAddr = 0x500;
inline constexpr uint64_t kStartInfoAddr = 0x6000;
inline constexpr uint64_t kModlistAddr = 0x6800;
inline constexpr uint64_t kMemmapAddr = 0x7000;
inline constexpr uint64_t kCmdlineAddr = 0x20000;
inline constexpr uint64_t kEbdaStart = 0x9fc00;         // RAM below it; reserved from here to 1 MiB
inline constexpr uint64_t kHighMemoryStart = 0x100000;  // 1 MiB
// x86 Linux copies at most COMMAND_LINE_SIZE (2048) bytes, the terminating NUL included.
inline constexpr size_t kMaxCmdlineSize = 2048;
// GDT selectors of the initial 32-bit flat segments.
inline constexpr uint16_t kBootCodeSelector = 0x08;
inline constexpr uint16_t kBootDataSelector = 0x10;
inline constexpr uint16_t kBootTssSelector = 0x18;

// virtio-mmio device i sits at kVirtioMmioBase + i * kVirtioMmioSize on GSI kVirtioFirstGsi + i.
inline constexpr uint64_t kVirtioMmioBase = 0xd000'0000;
inline constexpr uint64_t kVirtioMmioSize = 0x1000;
inline constexpr uint32_t kVirtioFirstGsi = 5;
// E820 / hvm_memmap_table_entry types.
enum class MemoryType : uint32_t { kRam = 1, kReserved = 2 };

struct MemoryMapEntry {
  uint64_t addr;
  uint64_t size;
  MemoryType type;

  bool operator==(const MemoryMapEntry&) const = default;
};

struct BootLayout {
  std::vector<MemoryMapEntry> memory_map;
  uint64_t initramfs_addr = 0;  // page aligned; 0 with no initramfs
  uint64_t initramfs_size = 0;
};

// Where everything goes for a guest of `memory_size` bytes (GuestMemory's regions: low RAM
// up to 3 GiB, the rest above 4 GiB) whose kernel occupies guest-physical memory up to
// `kernel_end`. The initramfs goes page aligned at the top of low RAM, above the kernel.
// Fails when the kernel or the initramfs does not fit.
[[nodiscard]] Result<BootLayout> PlanBootLayout(uint64_t memory_size, uint64_t kernel_end,
                                                uint64_t initramfs_size);

struct LoadedKernel {
  uint64_t entry;  // 32-bit PVH entry point (guest-physical)
  uint64_t end;    // first guest-physical byte above every loaded segment
};

// Copies the PT_LOAD segments of the ELF vmlinux at `path` to their physical addresses
// (zero filling up to p_memsz) and finds the PVH entry note. Every segment must lie in RAM.
[[nodiscard]] Result<LoadedKernel> LoadPvhKernel(const GuestMemory& memory,
                                                 const std::string& path);

// Copies the file at `path` (exactly `layout.initramfs_size` bytes) to its place.
[[nodiscard]] Result<void> LoadInitramfs(const GuestMemory& memory, const BootLayout& layout,
                                         const std::string& path);

// The hidden part of a segment register loaded with `selector` from the boot GDT, so the
// vCPU starts with exactly what the GDT in guest memory says.
[[nodiscard]] kvm_segment BootSegment(uint16_t selector);

// Writes the GDT, hvm_start_info, its module list, memory map and the command line.
[[nodiscard]] Result<void> WriteBootInfo(const GuestMemory& memory, const BootLayout& layout,
                                         std::string_view cmdline);

// The kernel command line the guest gets: the configured one plus a virtio_mmio.device=
// entry for each virtio slot in `slots`, placed before any "--" that starts init's
// arguments.
[[nodiscard]] std::string GuestCmdline(std::string_view configured,
                                       std::span<const uint32_t> slots);

}  // namespace vessel::vmm
