// Checks every device's LoadState makes of its input: an input cut short anywhere, one
// with a byte too many, or one of another version is refused as kSnapshotFormat.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "vessel/error.h"

namespace vessel::vmm::testing {

inline void ExpectSnapshotFormat(const Result<void>& loaded, const char* what) {
  ASSERT_FALSE(loaded) << what;
  EXPECT_EQ(loaded.error().kind(), ErrorKind::kSnapshotFormat)
      << what << ": " << loaded.error().ToString();
}

// `load` refuses every strict prefix of `saved`, `saved` with a byte appended, and `saved`
// with its leading u32 version changed; `load` gets a fresh device each call.
template <typename Load>
void ExpectRefusesDamaged(const std::vector<uint8_t>& saved, Load load) {
  for (size_t n = 0; n < saved.size(); ++n) {
    SCOPED_TRACE(::testing::Message() << "truncated to " << n << " of " << saved.size());
    ExpectSnapshotFormat(load(std::span(saved).first(n)), "truncated");
  }
  auto longer = saved;
  longer.push_back(0);
  ExpectSnapshotFormat(load(longer), "a trailing byte");
  ASSERT_GE(saved.size(), 4u);
  for (uint32_t version : {0u, 2u, 0xffffffffu}) {
    auto other = saved;
    std::memcpy(other.data(), &version, 4);
    ExpectSnapshotFormat(load(other), "another version");
  }
}

}  // namespace vessel::vmm::testing

namespace vessel::vmm::testing {

// A virtio-mmio transport's saved state whose device saved `device_state` (its last
// bytes), with `replacement` as the device's state instead.
inline std::vector<uint8_t> WithDeviceState(const std::vector<uint8_t>& transport_state,
                                            std::span<const uint8_t> device_state,
                                            std::span<const uint8_t> replacement) {
  size_t head = transport_state.size() - device_state.size() - sizeof(uint32_t);
  EXPECT_TRUE(std::equal(device_state.begin(), device_state.end(),
                         transport_state.begin() + static_cast<ptrdiff_t>(head) + 4));
  std::vector<uint8_t> out(transport_state.begin(),
                           transport_state.begin() + static_cast<ptrdiff_t>(head));
  auto length = static_cast<uint32_t>(replacement.size());
  out.insert(out.end(), reinterpret_cast<uint8_t*>(&length),
             reinterpret_cast<uint8_t*>(&length) + sizeof(length));
  out.insert(out.end(), replacement.begin(), replacement.end());
  return out;
}

}  // namespace vessel::vmm::testing
