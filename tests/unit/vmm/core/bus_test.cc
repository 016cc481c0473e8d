#include "vmm/core/bus.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <utility>

namespace vessel::vmm {
namespace {

TEST(Bus, FindsTheDeviceAndItsOffset) {
  int a = 0;
  int b = 0;
  Bus<int> bus;
  bus.Insert(0x60, 1, &a, 0);
  bus.Insert(0x64, 1, &a, 4);
  bus.Insert(0x3f8, 8, &b);
  EXPECT_EQ(bus.Find(0x64, 1), std::make_pair(&a, uint64_t{4}));
  EXPECT_EQ(bus.Find(0x3fa, 1), std::make_pair(&b, uint64_t{2}));
  EXPECT_EQ(bus.Find(0x3ff, 1).first, &b);
  EXPECT_EQ(bus.Find(0x3fe, 4).first, nullptr);  // runs past the device
  EXPECT_EQ(bus.Find(0x61, 1).first, nullptr);
}

}  // namespace
}  // namespace vessel::vmm
