// Guest RAM as seen by the VMM: one file in memory mapped once, placed in guest-physical
// space below the 32-bit MMIO hole and, for larger guests, above 4 GiB. The file is the
// VMM's own memfd, or the host's: mapped shared for a boot, private for a saved VM's
// memory, which a restored VM reads and never writes.
//
// Every address the guest hands the VMM (a descriptor, a buffer, a ring) goes through
// Slice(), which answers only for ranges that lie wholly inside one RAM region: an address
// in the hole, past the end, or a range that wraps yields nothing, never a pointer.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <type_traits>
#include <vector>

#include "base/unique_fd.h"
#include "vessel/error.h"

namespace vessel::vmm {

// Guest-physical layout. RAM runs from 0 up to the hole; what does not fit goes above 4 GiB.
inline constexpr uint64_t kMmioHoleStart = 0xC000'0000;  // 3 GiB
inline constexpr uint64_t kMmioHoleEnd = 0x1'0000'0000;  // 4 GiB

// Holes of a saved VM's memory file that MapHolesAnonymously() maps anonymously: the
// larger ones, and a bounded number of them, each a mapping of its own.
inline constexpr uint64_t kMinAnonymousHole = 64 * 1024;
inline constexpr size_t kMaxAnonymousHoles = 1024;

class GuestMemory {
 public:
  struct Region {
    uint64_t guest_addr;
    uint64_t size;
    uint64_t offset;  // into the memfd and the host mapping
  };

  GuestMemory(GuestMemory&& other) noexcept;
  GuestMemory& operator=(GuestMemory&& other) noexcept;
  GuestMemory(const GuestMemory&) = delete;
  GuestMemory& operator=(const GuestMemory&) = delete;
  ~GuestMemory();

  // `size` bytes (a multiple of 4 KiB, > 0) in a memfd, mapped shared, THP advised.
  [[nodiscard]] static Result<GuestMemory> Create(uint64_t size);
  // The first `size` bytes of `file`, which must be exactly that long, mapped shared or
  // private (copy-on-write: the guest's writes stay in this process).
  [[nodiscard]] static Result<GuestMemory> Map(UniqueFd file, uint64_t size, bool shared);

  // Turns a shared mapping into a private one of the same file at the same address, so that
  // the file keeps what it holds now and the guest's writes from now on are this process's
  // own. KVM follows the change: the host addresses of guest RAM stay the same.
  // Then maps the file's holes anonymously (MapHolesAnonymously).
  [[nodiscard]] Result<void> Freeze();
  // In a private mapping, maps the file's larger holes (kMinAnonymousHole and up, the
  // kMaxAnonymousHoles largest) to anonymous memory: the guest reads zeros there as before.
  // Touching a hole of a memfd through a private mapping allocates a page of zeros in the
  // file, which the VM then copies on write: each page a fork's child wrote in a hole would
  // cost twice, once in the template all children share. Only while nothing has written the
  // private mapping's holes, as after a freeze and before a restored guest runs: what was
  // written there is dropped. A shared mapping is left as it is.
  [[nodiscard]] Result<void> MapHolesAnonymously();
  [[nodiscard]] bool shared() const { return shared_; }

  [[nodiscard]] uint64_t size() const { return size_; }
  [[nodiscard]] int fd() const { return fd_.get(); }
  // This process's /proc/self/pagemap, opened with the mapping (a confined VMM opens
  // nothing later); -1 where /proc is not there.
  [[nodiscard]] int pagemap() const { return pagemap_.get(); }
  [[nodiscard]] uint8_t* host_base() const { return base_; }
  [[nodiscard]] const std::vector<Region>& regions() const { return regions_; }

  // Host view of [guest_addr, guest_addr + len), or nothing when any byte of it is not RAM
  // of a single region (or the sum overflows). len 0 is a valid, empty slice of RAM.
  [[nodiscard]] std::optional<std::span<uint8_t>> Slice(uint64_t guest_addr, uint64_t len) const;

  // Copies to or from guest RAM; false when the range is not RAM.
  [[nodiscard]] bool Read(uint64_t guest_addr, std::span<uint8_t> out) const;
  [[nodiscard]] bool Write(uint64_t guest_addr, std::span<const uint8_t> in) const;

  template <typename T>
  [[nodiscard]] std::optional<T> ReadObj(uint64_t guest_addr) const {
    static_assert(std::is_trivially_copyable_v<T>);
    T value;
    if (!Read(guest_addr, {reinterpret_cast<uint8_t*>(&value), sizeof(T)})) return std::nullopt;
    return value;
  }
  template <typename T>
  [[nodiscard]] bool WriteObj(uint64_t guest_addr, const T& value) const {
    static_assert(std::is_trivially_copyable_v<T>);
    return Write(guest_addr, {reinterpret_cast<const uint8_t*>(&value), sizeof(T)});
  }

 private:
  GuestMemory(UniqueFd fd, uint8_t* base, uint64_t size, bool shared);

  UniqueFd fd_;
  UniqueFd pagemap_;
  uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  bool shared_ = true;
  std::vector<Region> regions_;
};

}  // namespace vessel::vmm
