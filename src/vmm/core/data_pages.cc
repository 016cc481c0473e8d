#include "vmm/core/data_pages.h"

#include <unistd.h>

#include <array>
#include <span>

#include "base/io.h"

namespace vessel::vmm {
namespace {

// /proc/PID/pagemap: one 64-bit entry per virtual page; bit 63 present, bit 62 swapped.
constexpr uint64_t kPagemapPresent = uint64_t{1} << 63;
constexpr uint64_t kPagemapSwapped = uint64_t{1} << 62;

// Marks the pages of the file's data ranges.
Result<void> MarkFileData(int fd, uint64_t size, std::vector<bool>& pages) {
  return ForEachDataExtent(fd, size, [&](uint64_t begin, uint64_t end) -> Result<void> {
    for (uint64_t page = begin / kDataPageSize; page * kDataPageSize < end; ++page) {
      pages[page] = true;
    }
    return {};
  });
}

// Marks the pages this process has mapped or swapped out; false when its pagemap cannot be
// read.
bool MarkMapped(const GuestMemory& memory, std::vector<bool>& pages) {
  if (memory.pagemap() < 0) return false;
  constexpr size_t kBatch = 4096;
  std::array<uint64_t, kBatch> entries{};
  uint64_t first = reinterpret_cast<uint64_t>(memory.host_base()) / kDataPageSize;
  for (uint64_t page = 0; page < pages.size(); page += kBatch) {
    size_t count = std::min<uint64_t>(kBatch, pages.size() - page);
    std::span<uint8_t> bytes(reinterpret_cast<uint8_t*>(entries.data()), count * sizeof(uint64_t));
    if (!ReadExactlyAt(memory.pagemap(), bytes,
                       static_cast<off_t>((first + page) * sizeof(uint64_t)), "the pagemap")) {
      return false;
    }
    for (size_t i = 0; i < count; ++i) {
      if (entries[i] & (kPagemapPresent | kPagemapSwapped)) pages[page + i] = true;
    }
  }
  return true;
}

}  // namespace

Result<std::vector<bool>> CandidateDataPages(const GuestMemory& memory) {
  uint64_t count = (memory.size() + kDataPageSize - 1) / kDataPageSize;
  std::vector<bool> pages(count, false);
  if (auto r = MarkFileData(memory.fd(), memory.size(), pages); !r)
    return Fail(std::move(r).error());
  if (!memory.shared() && !MarkMapped(memory, pages)) pages.assign(count, true);
  return pages;
}

Result<void> WriteDataPages(const GuestMemory& memory, int out) {
  auto candidates = CandidateDataPages(memory);
  if (!candidates) return Fail(std::move(candidates).error());
  const uint8_t* base = memory.host_base();
  uint64_t size = memory.size();
  // Runs of pages that hold data, each in one write.
  uint64_t run = 0;
  for (uint64_t page = 0; page <= candidates->size(); ++page) {
    uint64_t at = page * kDataPageSize;
    if (page < candidates->size() && (*candidates)[page] &&
        !IsZeros({base + at, std::min(kDataPageSize, size - at)})) {
      continue;
    }
    uint64_t end = std::min(at, size);
    if (end > run) {
      if (auto r =
              WriteAllAt(out, {base + run, end - run}, static_cast<off_t>(run), "the memory file");
          !r) {
        return r;
      }
    }
    run = at + kDataPageSize;
  }
  return {};
}

}  // namespace vessel::vmm
