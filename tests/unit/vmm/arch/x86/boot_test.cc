#include "vmm/arch/x86/boot.h"

#include <elf.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace vessel::vmm {
namespace {

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kGiB = 1ull << 30;
constexpr uint64_t kKernelEnd = 28 * kMiB;  // a kernel loaded at 16 MiB, as vmlinux is
constexpr uint64_t kInitramfs = 3'756'032;  // an odd size, not page aligned

uint64_t RamBytes(const BootLayout& layout) {
  uint64_t total = 0;
  for (const auto& e : layout.memory_map) {
    if (e.type == MemoryType::kRam) total += e.size;
  }
  return total;
}

// What must hold for every memory size.
void CheckLayout(uint64_t memory, const BootLayout& layout) {
  SCOPED_TRACE(memory);
  uint64_t low_end = std::min(memory, kMmioHoleStart);
  ASSERT_GE(layout.memory_map.size(), 3u);
  EXPECT_EQ(layout.memory_map[0], (MemoryMapEntry{0, 0x9fc00, MemoryType::kRam}));
  EXPECT_EQ(layout.memory_map[1],
            (MemoryMapEntry{0x9fc00, 0x100000 - 0x9fc00, MemoryType::kReserved}));
  EXPECT_EQ(layout.memory_map[2], (MemoryMapEntry{0x100000, low_end - 0x100000, MemoryType::kRam}));
  // Every byte of RAM is in the map except the 0x9fc00..1 MiB hole.
  EXPECT_EQ(RamBytes(layout), memory - (0x100000 - 0x9fc00));
  // No entry overlaps the next one or the 32-bit MMIO hole.
  for (size_t i = 0; i < layout.memory_map.size(); ++i) {
    const auto& e = layout.memory_map[i];
    EXPECT_TRUE(e.addr + e.size <= kMmioHoleStart || e.addr >= kMmioHoleEnd);
    if (i + 1 < layout.memory_map.size()) {
      EXPECT_LE(e.addr + e.size, layout.memory_map[i + 1].addr);
    }
  }
  // The initramfs: page aligned, above the kernel, inside low RAM, near its top.
  EXPECT_EQ(layout.initramfs_size, kInitramfs);
  EXPECT_EQ(layout.initramfs_addr % 4096, 0u);
  EXPECT_GE(layout.initramfs_addr, kKernelEnd);
  EXPECT_LE(layout.initramfs_addr + layout.initramfs_size, low_end);
  EXPECT_GT(layout.initramfs_addr + layout.initramfs_size + 4096, low_end);
}

TEST(BootLayout, SixtyFourMiB) {
  auto layout = PlanBootLayout(64 * kMiB, kKernelEnd, kInitramfs);
  ASSERT_TRUE(layout) << layout.error().ToString();
  EXPECT_EQ(layout->memory_map.size(), 3u);
  CheckLayout(64 * kMiB, *layout);
}

TEST(BootLayout, TwoHundredFiftySixMiB) {
  auto layout = PlanBootLayout(256 * kMiB, kKernelEnd, kInitramfs);
  ASSERT_TRUE(layout) << layout.error().ToString();
  EXPECT_EQ(layout->memory_map.size(), 3u);
  CheckLayout(256 * kMiB, *layout);
}

TEST(BootLayout, ThreeGiBFillsLowMemoryExactly) {
  auto layout = PlanBootLayout(3 * kGiB, kKernelEnd, kInitramfs);
  ASSERT_TRUE(layout) << layout.error().ToString();
  EXPECT_EQ(layout->memory_map.size(), 3u);
  CheckLayout(3 * kGiB, *layout);
}

TEST(BootLayout, OnePageMoreThanThreeGiBGoesAboveFourGiB) {
  auto layout = PlanBootLayout(3 * kGiB + 4096, kKernelEnd, kInitramfs);
  ASSERT_TRUE(layout) << layout.error().ToString();
  ASSERT_EQ(layout->memory_map.size(), 4u);
  EXPECT_EQ(layout->memory_map[3], (MemoryMapEntry{kMmioHoleEnd, 4096, MemoryType::kRam}));
  CheckLayout(3 * kGiB + 4096, *layout);
}

TEST(BootLayout, EightGiB) {
  auto layout = PlanBootLayout(8 * kGiB, kKernelEnd, kInitramfs);
  ASSERT_TRUE(layout) << layout.error().ToString();
  ASSERT_EQ(layout->memory_map.size(), 4u);
  EXPECT_EQ(layout->memory_map[3], (MemoryMapEntry{kMmioHoleEnd, 5 * kGiB, MemoryType::kRam}));
  CheckLayout(8 * kGiB, *layout);
}

TEST(BootLayout, NoInitramfs) {
  auto layout = PlanBootLayout(256 * kMiB, kKernelEnd, 0);
  ASSERT_TRUE(layout);
  EXPECT_EQ(layout->initramfs_addr, 0u);
  EXPECT_EQ(layout->initramfs_size, 0u);
}

TEST(BootLayout, InitramfsTooLargeIsAClearError) {
  auto layout = PlanBootLayout(64 * kMiB, kKernelEnd, 40 * kMiB);
  ASSERT_FALSE(layout);
  EXPECT_EQ(layout.error().kind(), ErrorKind::kInvalidConfig);
  EXPECT_EQ(layout.error().subject(), "initramfs");
  EXPECT_NE(layout.error().message().find("does not fit"), std::string::npos);
  // Exactly the room above the kernel still fits.
  EXPECT_TRUE(PlanBootLayout(64 * kMiB, kKernelEnd, 64 * kMiB - kKernelEnd));
  EXPECT_FALSE(PlanBootLayout(64 * kMiB, kKernelEnd, 64 * kMiB - kKernelEnd + 1));
}

TEST(BootLayout, KernelLargerThanMemoryIsAnError) {
  auto layout = PlanBootLayout(16 * kMiB, kKernelEnd, 0);
  ASSERT_FALSE(layout);
  EXPECT_EQ(layout.error().subject(), "memory");
  EXPECT_FALSE(PlanBootLayout(kMiB, 0, 0));
  EXPECT_FALSE(PlanBootLayout(64 * kMiB + 1, kKernelEnd, 0));
}

TEST(BootSegment, MatchesTheFlat32BitGdt) {
  kvm_segment cs = BootSegment(kBootCodeSelector);
  EXPECT_EQ(cs.selector, kBootCodeSelector);
  EXPECT_EQ(cs.base, 0u);
  EXPECT_EQ(cs.limit, 0xffffffffu);
  EXPECT_EQ(cs.type, 0xb);
  EXPECT_EQ(cs.present, 1);
  EXPECT_EQ(cs.db, 1);
  EXPECT_EQ(cs.s, 1);
  EXPECT_EQ(cs.l, 0);
  EXPECT_EQ(cs.g, 1);
  kvm_segment ds = BootSegment(kBootDataSelector);
  EXPECT_EQ(ds.type, 0x3);
  EXPECT_EQ(ds.limit, 0xffffffffu);
  kvm_segment tr = BootSegment(kBootTssSelector);
  EXPECT_EQ(tr.type, 0xb);  // busy 32-bit TSS
  EXPECT_EQ(tr.s, 0);
  EXPECT_EQ(tr.limit, 0x67u);
  EXPECT_EQ(tr.g, 0);
}

// A temporary file that goes away with the test.
class TempFile {
 public:
  explicit TempFile(const std::vector<uint8_t>& data) {
    char name[] = "/tmp/vessel-boot-test-XXXXXX";
    int fd = mkstemp(name);
    path_ = name;
    if (fd >= 0) {
      EXPECT_EQ(write(fd, data.data(), data.size()), static_cast<ssize_t>(data.size()));
      close(fd);
    }
  }
  ~TempFile() { unlink(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

template <typename T>
void Put(std::vector<uint8_t>& out, size_t at, const T& value) {
  if (out.size() < at + sizeof(T)) out.resize(at + sizeof(T));
  std::memcpy(out.data() + at, &value, sizeof(T));
}

struct ElfOptions {
  uint64_t load_paddr = 0x100000;
  bool with_note = true;
  uint32_t note_type = 18;
};

// A minimal vmlinux: one PT_LOAD segment (16 bytes of code, 4 KiB of bss) and a PT_NOTE
// with the Xen PVH entry note.
std::vector<uint8_t> MakeElf(const ElfOptions& options) {
  std::vector<uint8_t> file(0x200, 0);
  Elf64_Ehdr ehdr{};
  std::memcpy(ehdr.e_ident, ELFMAG, SELFMAG);
  ehdr.e_ident[EI_CLASS] = ELFCLASS64;
  ehdr.e_ident[EI_DATA] = ELFDATA2LSB;
  ehdr.e_ident[EI_VERSION] = EV_CURRENT;
  ehdr.e_type = ET_EXEC;
  ehdr.e_machine = EM_X86_64;
  ehdr.e_version = EV_CURRENT;
  ehdr.e_phoff = sizeof(Elf64_Ehdr);
  ehdr.e_ehsize = sizeof(Elf64_Ehdr);
  ehdr.e_phentsize = sizeof(Elf64_Phdr);
  ehdr.e_phnum = options.with_note ? 2 : 1;
  Put(file, 0, ehdr);

  Elf64_Phdr load{};
  load.p_type = PT_LOAD;
  load.p_offset = 0x100;
  load.p_paddr = options.load_paddr;
  load.p_filesz = 16;
  load.p_memsz = 16 + 4096;
  Put(file, sizeof(Elf64_Ehdr), load);
  for (uint8_t i = 0; i < 16; ++i) file[0x100 + i] = static_cast<uint8_t>(0xa0 + i);

  if (options.with_note) {
    // Another note first, so the parser has to walk past it.
    std::vector<uint8_t> notes;
    Put(notes, 0, Elf64_Nhdr{.n_namesz = 4, .n_descsz = 4, .n_type = 1});
    Put(notes, 12, std::array<char, 4>{'G', 'N', 'U', '\0'});
    Put(notes, 16, uint32_t{0x12345678});
    Put(notes, 20, Elf64_Nhdr{.n_namesz = 4, .n_descsz = 8, .n_type = options.note_type});
    Put(notes, 32, std::array<char, 4>{'X', 'e', 'n', '\0'});
    Put(notes, 36, uint64_t{0x100008});
    Elf64_Phdr note{};
    note.p_type = PT_NOTE;
    note.p_offset = 0x180;
    note.p_filesz = notes.size();
    Put(file, sizeof(Elf64_Ehdr) + sizeof(Elf64_Phdr), note);
    std::memcpy(file.data() + 0x180, notes.data(), notes.size());
  }
  return file;
}

TEST(LoadPvhKernel, LoadsSegmentsAndFindsTheEntryNote) {
  auto memory = GuestMemory::Create(4 * kMiB);
  ASSERT_TRUE(memory);
  auto* garbage = memory->Slice(0x100000, 0x2000)->data();
  std::memset(garbage, 0xcc, 0x2000);  // the bss must come out zeroed
  TempFile elf(MakeElf({}));
  auto kernel = LoadPvhKernel(*memory, elf.path());
  ASSERT_TRUE(kernel) << kernel.error().ToString();
  EXPECT_EQ(kernel->entry, 0x100008u);
  EXPECT_EQ(kernel->end, 0x100000u + 16 + 4096);
  EXPECT_EQ(memory->ReadObj<uint8_t>(0x100000), 0xa0);
  EXPECT_EQ(memory->ReadObj<uint8_t>(0x10000f), 0xaf);
  EXPECT_EQ(memory->ReadObj<uint8_t>(0x100010), 0);
  EXPECT_EQ(memory->ReadObj<uint8_t>(0x10100f), 0);
  EXPECT_EQ(memory->ReadObj<uint8_t>(0x101010), 0xcc);
}

TEST(LoadPvhKernel, RejectsAKernelWithoutThePvhNote) {
  auto memory = GuestMemory::Create(4 * kMiB);
  ASSERT_TRUE(memory);
  TempFile no_note(MakeElf({.with_note = false}));
  auto kernel = LoadPvhKernel(*memory, no_note.path());
  ASSERT_FALSE(kernel);
  EXPECT_NE(kernel.error().message().find("PVH"), std::string::npos);
  TempFile other_note(MakeElf({.note_type = 17}));
  EXPECT_FALSE(LoadPvhKernel(*memory, other_note.path()));
}

TEST(LoadPvhKernel, RejectsSegmentsOutsideRam) {
  auto memory = GuestMemory::Create(4 * kMiB);
  ASSERT_TRUE(memory);
  TempFile past_end(MakeElf({.load_paddr = 4 * kMiB - 16}));
  auto kernel = LoadPvhKernel(*memory, past_end.path());
  ASSERT_FALSE(kernel);
  EXPECT_NE(kernel.error().message().find("outside guest RAM"), std::string::npos);
  TempFile wraps(MakeElf({.load_paddr = UINT64_MAX - 8}));
  EXPECT_FALSE(LoadPvhKernel(*memory, wraps.path()));
}

TEST(LoadPvhKernel, RejectsFilesThatAreNotElf) {
  auto memory = GuestMemory::Create(4 * kMiB);
  ASSERT_TRUE(memory);
  TempFile text(std::vector<uint8_t>(100, 'x'));
  EXPECT_FALSE(LoadPvhKernel(*memory, text.path()));
  TempFile empty(std::vector<uint8_t>{});
  EXPECT_FALSE(LoadPvhKernel(*memory, empty.path()));
  auto truncated = MakeElf({});
  truncated.resize(0x110);  // the segment's bytes are cut short
  TempFile cut(truncated);
  EXPECT_FALSE(LoadPvhKernel(*memory, cut.path()));
  EXPECT_FALSE(LoadPvhKernel(*memory, "/nonexistent/vmlinux"));
}

struct StartInfo {
  uint32_t magic, version, flags, nr_modules;
  uint64_t modlist_paddr, cmdline_paddr, rsdp_paddr, memmap_paddr;
  uint32_t memmap_entries, reserved;
};

TEST(WriteBootInfo, WritesStartInfoMemoryMapCmdlineAndModule) {
  auto memory = GuestMemory::Create(64 * kMiB);
  ASSERT_TRUE(memory);
  auto layout = PlanBootLayout(64 * kMiB, kKernelEnd, kInitramfs);
  ASSERT_TRUE(layout);
  ASSERT_TRUE(WriteBootInfo(*memory, *layout, "console=ttyS0 quiet"));

  auto info = memory->ReadObj<StartInfo>(kStartInfoAddr);
  ASSERT_TRUE(info);
  EXPECT_EQ(info->magic, 0x336ec578u);
  EXPECT_EQ(info->version, 1u);
  EXPECT_EQ(info->nr_modules, 1u);
  EXPECT_EQ(info->memmap_entries, 3u);
  EXPECT_EQ(info->rsdp_paddr, 0u);

  auto cmdline = memory->Slice(info->cmdline_paddr, 20);
  ASSERT_TRUE(cmdline);
  EXPECT_STREQ(reinterpret_cast<const char*>(cmdline->data()), "console=ttyS0 quiet");

  auto module = memory->ReadObj<std::array<uint64_t, 4>>(info->modlist_paddr);
  ASSERT_TRUE(module);
  EXPECT_EQ((*module)[0], layout->initramfs_addr);
  EXPECT_EQ((*module)[1], kInitramfs);

  struct Entry {
    uint64_t addr, size;
    uint32_t type, reserved;
  };
  auto third = memory->ReadObj<Entry>(info->memmap_paddr + 2 * sizeof(Entry));
  ASSERT_TRUE(third);
  EXPECT_EQ(third->addr, 0x100000u);
  EXPECT_EQ(third->size, 64 * kMiB - 0x100000);
  EXPECT_EQ(third->type, 1u);
}

TEST(WriteBootInfo, RefusesACommandLineTooLongForTheKernel) {
  auto memory = GuestMemory::Create(64 * kMiB);
  ASSERT_TRUE(memory);
  auto layout = PlanBootLayout(64 * kMiB, kKernelEnd, 0);
  ASSERT_TRUE(layout);
  EXPECT_TRUE(WriteBootInfo(*memory, *layout, std::string(kMaxCmdlineSize - 1, 'a')));
  auto r = WriteBootInfo(*memory, *layout, std::string(kMaxCmdlineSize, 'a'));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().subject(), "cmdline");
  EXPECT_FALSE(WriteBootInfo(*memory, *layout, std::string("a\0b", 3)));
}

TEST(GuestCmdline, AnnouncesEachVirtioSlot) {
  std::array<uint32_t, 2> slots = {0, 1};
  EXPECT_EQ(GuestCmdline("console=ttyS0", slots),
            "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 "
            "virtio_mmio.device=4K@0xd0001000:6");
  EXPECT_EQ(GuestCmdline("", std::span<const uint32_t>()), "");
  EXPECT_EQ(GuestCmdline("", std::span(slots).first(1)), "virtio_mmio.device=4K@0xd0000000:5");
}

TEST(GuestCmdline, KernelParametersGoBeforeInitArguments) {
  std::array<uint32_t, 1> slots = {1};
  EXPECT_EQ(GuestCmdline("quiet rdinit=/bin/ls -- -l /sys", slots),
            "quiet rdinit=/bin/ls virtio_mmio.device=4K@0xd0001000:6 -- -l /sys");
  EXPECT_EQ(GuestCmdline("-- x", slots), "virtio_mmio.device=4K@0xd0001000:6 -- x");
  EXPECT_EQ(GuestCmdline("a --", slots), "a virtio_mmio.device=4K@0xd0001000:6 --");
  // Not an argument of its own, or inside quotes: no split.
  EXPECT_EQ(GuestCmdline("a=-- b--", slots), "a=-- b-- virtio_mmio.device=4K@0xd0001000:6");
  EXPECT_EQ(GuestCmdline("x=\"a -- b\"", slots), "x=\"a -- b\" virtio_mmio.device=4K@0xd0001000:6");
}

}  // namespace
}  // namespace vessel::vmm
