// A saved VM's memory file holds only the pages of guest RAM that hold data: the rest stay
// holes. Finding them must not cost in proportion to the RAM's size, nor make the VM's
// memory grow: touching a hole of a memfd through a mapping, shared or private, allocates a
// page in the file.
#pragma once

#include <cstdint>
#include <vector>

#include "vessel/error.h"
#include "vmm/core/guest_memory.h"

namespace vessel::vmm {

inline constexpr uint64_t kDataPageSize = 4096;

// Which 4 KiB pages of `memory` may hold data: those the file has data in (SEEK_DATA,
// SEEK_HOLE, which never allocate), and in a private mapping also those this process has
// mapped or swapped out (its pagemap): the guest's own writes, which the file lacks. Where
// the pagemap cannot be read, every page of a private mapping is a candidate.
[[nodiscard]] Result<std::vector<bool>> CandidateDataPages(const GuestMemory& memory);

// Writes the candidate pages that are not all zeros to the same offsets of `out`, one write
// per run of such pages; `out` must be sized beforehand, so that the rest stays holes.
[[nodiscard]] Result<void> WriteDataPages(const GuestMemory& memory, int out);

}  // namespace vessel::vmm
