#include "vmm/core/guest_memory.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <functional>
#include <utility>

#include "base/io.h"

namespace vessel::vmm {

GuestMemory::GuestMemory(UniqueFd fd, uint8_t* base, uint64_t size, bool shared)
    : fd_(std::move(fd)),
      pagemap_(::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC)),
      base_(base),
      size_(size),
      shared_(shared) {
  uint64_t low = size < kMmioHoleStart ? size : kMmioHoleStart;
  regions_.push_back({.guest_addr = 0, .size = low, .offset = 0});
  if (size > low)
    regions_.push_back({.guest_addr = kMmioHoleEnd, .size = size - low, .offset = low});
}

GuestMemory::GuestMemory(GuestMemory&& other) noexcept
    : fd_(std::move(other.fd_)),
      pagemap_(std::move(other.pagemap_)),
      base_(std::exchange(other.base_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      shared_(other.shared_),
      regions_(std::move(other.regions_)) {}

GuestMemory& GuestMemory::operator=(GuestMemory&& other) noexcept {
  if (this != &other) {
    if (base_) munmap(base_, size_);
    fd_ = std::move(other.fd_);
    pagemap_ = std::move(other.pagemap_);
    base_ = std::exchange(other.base_, nullptr);
    size_ = std::exchange(other.size_, 0);
    shared_ = other.shared_;
    regions_ = std::move(other.regions_);
  }
  return *this;
}

GuestMemory::~GuestMemory() {
  if (base_) munmap(base_, size_);
}

Result<GuestMemory> GuestMemory::Create(uint64_t size) {
  if (size == 0 || size % 4096 != 0) {
    return Fail(
        Error::InvalidConfig("memory", "guest memory must be a positive multiple of 4 KiB"));
  }
  UniqueFd fd(memfd_create("vessel-guest-ram", MFD_CLOEXEC));
  if (!fd) return Fail(Error::HostIo("memfd_create for guest memory", errno));
  if (ftruncate(fd.get(), static_cast<off_t>(size)) != 0) {
    return Fail(Error::HostIo("sizing guest memory", errno));
  }
  return Map(std::move(fd), size, /*shared=*/true);
}

Result<GuestMemory> GuestMemory::Map(UniqueFd file, uint64_t size, bool shared) {
  if (size == 0 || size % 4096 != 0) {
    return Fail(
        Error::InvalidConfig("memory", "guest memory must be a positive multiple of 4 KiB"));
  }
  struct stat st {};
  if (fstat(file.get(), &st) != 0) return Fail(Error::HostIo("stat the guest memory file", errno));
  if (!S_ISREG(st.st_mode) || static_cast<uint64_t>(st.st_size) != size) {
    return Fail(Error::InvalidConfig(
        "memory", fmt::format("the guest memory file holds {} bytes, not {}", st.st_size, size)));
  }
  void* base = mmap(nullptr, size, PROT_READ | PROT_WRITE,
                    (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_NORESERVE, file.get(), 0);
  if (base == MAP_FAILED) return Fail(Error::HostIo("mapping guest memory", errno));
  madvise(base, size, MADV_HUGEPAGE);  // advisory: fine if THP is off for shmem
  return GuestMemory(std::move(file), static_cast<uint8_t*>(base), size, shared);
}

Result<void> GuestMemory::Freeze() {
  if (!shared_) return {};
  void* base = mmap(base_, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE | MAP_FIXED,
                    fd_.get(), 0);
  if (base == MAP_FAILED) return Fail(Error::HostIo("mapping guest memory private", errno));
  madvise(base_, size_, MADV_HUGEPAGE);
  shared_ = false;
  return MapHolesAnonymously();
}

Result<void> GuestMemory::MapHolesAnonymously() {
  if (shared_) return {};
  constexpr uint64_t kPage = 4096;
  struct Hole {
    uint64_t begin;
    uint64_t end;
  };
  std::vector<Hole> holes;
  auto add = [&](uint64_t begin, uint64_t end) {
    begin = (begin + kPage - 1) / kPage * kPage;
    end = end / kPage * kPage;
    if (end > begin && end - begin >= kMinAnonymousHole) holes.push_back({begin, end});
  };
  uint64_t hole = 0;
  if (auto r = ForEachDataExtent(fd_.get(), size_,
                                 [&](uint64_t begin, uint64_t end) -> Result<void> {
                                   add(hole, begin);
                                   hole = end;
                                   return {};
                                 });
      !r) {
    return r;
  }
  add(hole, size_);
  if (holes.size() > kMaxAnonymousHoles) {
    std::ranges::nth_element(holes, holes.begin() + kMaxAnonymousHoles - 1, std::greater{},
                             [](const Hole& h) { return h.end - h.begin; });
    holes.resize(kMaxAnonymousHoles);
  }
  for (const Hole& h : holes) {
    // No huge pages: a child that writes 4 KiB of a hole pays 4 KiB.
    void* at = mmap(base_ + h.begin, h.end - h.begin, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
    if (at == MAP_FAILED) return Fail(Error::HostIo("mapping a hole of guest memory", errno));
    madvise(at, h.end - h.begin, MADV_NOHUGEPAGE);
  }
  return {};
}

std::optional<std::span<uint8_t>> GuestMemory::Slice(uint64_t guest_addr, uint64_t len) const {
  for (const Region& r : regions_) {
    if (guest_addr < r.guest_addr) continue;
    uint64_t skip = guest_addr - r.guest_addr;
    if (skip > r.size || len > r.size - skip) continue;
    return std::span<uint8_t>(base_ + r.offset + skip, len);
  }
  return std::nullopt;
}

bool GuestMemory::Read(uint64_t guest_addr, std::span<uint8_t> out) const {
  auto slice = Slice(guest_addr, out.size());
  if (!slice) return false;
  if (!out.empty()) std::memcpy(out.data(), slice->data(), out.size());
  return true;
}

bool GuestMemory::Write(uint64_t guest_addr, std::span<const uint8_t> in) const {
  auto slice = Slice(guest_addr, in.size());
  if (!slice) return false;
  if (!in.empty()) std::memcpy(slice->data(), in.data(), in.size());
  return true;
}

}  // namespace vessel::vmm
