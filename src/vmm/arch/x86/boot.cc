#include "vmm/arch/x86/boot.h"

#include <elf.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <optional>

#include "base/unique_fd.h"

namespace vessel::vmm {
namespace {

constexpr uint64_t kPageSize = 4096;
constexpr uint32_t kXenElfnotePhys32Entry = 18;
constexpr uint32_t kHvmStartMagic = 0x336ec578;
// A kernel's program headers fit in a page; anything larger is not a vmlinux.
constexpr uint16_t kMaxProgramHeaders = 64;
constexpr uint64_t kMaxNoteSegment = 64 * 1024;

// xen/include/public/arch-x86/hvm/start_info.h, version 1.
struct HvmStartInfo {
  uint32_t magic;
  uint32_t version;
  uint32_t flags;
  uint32_t nr_modules;
  uint64_t modlist_paddr;
  uint64_t cmdline_paddr;
  uint64_t rsdp_paddr;
  uint64_t memmap_paddr;
  uint32_t memmap_entries;
  uint32_t reserved;
};
static_assert(sizeof(HvmStartInfo) == 56);

struct HvmModlistEntry {
  uint64_t paddr;
  uint64_t size;
  uint64_t cmdline_paddr;
  uint64_t reserved;
};
static_assert(sizeof(HvmModlistEntry) == 32);

struct HvmMemmapEntry {
  uint64_t addr;
  uint64_t size;
  uint32_t type;
  uint32_t reserved;
};
static_assert(sizeof(HvmMemmapEntry) == 24);

// Access bytes and flags (bits 8..15 of the descriptor's upper dword) of each boot segment.
constexpr uint16_t kCodeFlags = 0xc09b;  // 4 KiB granular, 32-bit, present, code r/x accessed
constexpr uint16_t kDataFlags = 0xc093;  // 4 KiB granular, 32-bit, present, data r/w accessed
constexpr uint16_t kTssFlags = 0x008b;   // present, 32-bit busy TSS

struct GdtSegment {
  uint16_t flags;
  uint32_t base;
  uint32_t limit;  // 20 bits
};

constexpr std::array<GdtSegment, 4> kBootGdt = {{
    {0, 0, 0},
    {kCodeFlags, 0, 0xfffff},
    {kDataFlags, 0, 0xfffff},
    {kTssFlags, 0, 0x67},
}};

uint64_t EncodeDescriptor(const GdtSegment& s) {
  uint64_t base = s.base;
  uint64_t limit = s.limit;
  return ((base & 0xff000000) << 32) | ((base & 0x00ffffff) << 16) | (limit & 0xffff) |
         ((limit & 0xf0000) << 32) | (static_cast<uint64_t>(s.flags & 0xf0ff) << 40);
}

uint64_t AlignDown(uint64_t value, uint64_t align) { return value & ~(align - 1); }
uint64_t AlignUp(uint64_t value, uint64_t align) { return (value + align - 1) & ~(align - 1); }

Result<void> PreadExact(int fd, std::span<uint8_t> out, uint64_t offset, const std::string& path) {
  size_t done = 0;
  while (done < out.size()) {
    ssize_t n = pread(fd, out.data() + done, out.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Fail(Error::HostIo(fmt::format("reading {}", path), errno));
    }
    if (n == 0) return Fail(Error::InvalidConfig("kernel", fmt::format("{} is truncated", path)));
    done += static_cast<size_t>(n);
  }
  return {};
}

// The PVH entry from the notes of one PT_NOTE segment, if it has one.
std::optional<uint64_t> FindPvhEntry(std::span<const uint8_t> notes) {
  size_t pos = 0;
  while (notes.size() - pos >= sizeof(Elf64_Nhdr)) {
    Elf64_Nhdr header;
    std::memcpy(&header, notes.data() + pos, sizeof(header));
    pos += sizeof(header);
    uint64_t name_size = AlignUp(header.n_namesz, 4);
    uint64_t desc_size = AlignUp(header.n_descsz, 4);
    if (name_size > notes.size() - pos) return std::nullopt;
    std::string_view name(reinterpret_cast<const char*>(notes.data() + pos), header.n_namesz);
    pos += name_size;
    if (desc_size > notes.size() - pos) return std::nullopt;
    if (header.n_type == kXenElfnotePhys32Entry && name == std::string_view("Xen\0", 4)) {
      // Linux emits the entry as a pointer-sized value; only its low 32 bits matter.
      if (header.n_descsz < 4) return std::nullopt;
      uint32_t entry;
      std::memcpy(&entry, notes.data() + pos, sizeof(entry));
      return entry;
    }
    pos += desc_size;
  }
  return std::nullopt;
}

}  // namespace

Result<BootLayout> PlanBootLayout(uint64_t memory_size, uint64_t kernel_end,
                                  uint64_t initramfs_size) {
  uint64_t low_end = memory_size < kMmioHoleStart ? memory_size : kMmioHoleStart;
  if (memory_size % kPageSize != 0 || low_end <= kHighMemoryStart) {
    return Fail(Error::InvalidConfig(
        "memory",
        fmt::format("{} bytes of guest memory is too small or not page aligned", memory_size)));
  }
  if (kernel_end > low_end) {
    return Fail(Error::InvalidConfig(
        "memory", fmt::format("the kernel needs {} MiB of low memory but the guest has {} MiB",
                              AlignUp(kernel_end, 1 << 20) >> 20, low_end >> 20)));
  }
  BootLayout layout;
  layout.memory_map = {
      {.addr = 0, .size = kEbdaStart, .type = MemoryType::kRam},
      {.addr = kEbdaStart, .size = kHighMemoryStart - kEbdaStart, .type = MemoryType::kReserved},
      {.addr = kHighMemoryStart, .size = low_end - kHighMemoryStart, .type = MemoryType::kRam},
  };
  if (memory_size > low_end) {
    layout.memory_map.push_back(
        {.addr = kMmioHoleEnd, .size = memory_size - low_end, .type = MemoryType::kRam});
  }
  if (initramfs_size > 0) {
    uint64_t room = low_end - AlignUp(kernel_end, kPageSize);
    if (initramfs_size > room) {
      return Fail(Error::InvalidConfig(
          "initramfs", fmt::format("the initramfs ({} bytes) does not fit in the {} bytes of "
                                   "low memory above the kernel",
                                   initramfs_size, room)));
    }
    layout.initramfs_addr = AlignDown(low_end - initramfs_size, kPageSize);
    layout.initramfs_size = initramfs_size;
  }
  return layout;
}

Result<LoadedKernel> LoadPvhKernel(const GuestMemory& memory, const std::string& path) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return Fail(Error::HostIo(fmt::format("opening kernel {}", path), errno));
  auto bad = [&path](std::string_view why) {
    return Fail(Error::InvalidConfig("kernel", fmt::format("{}: {}", path, why)));
  };

  Elf64_Ehdr ehdr;
  if (auto r = PreadExact(fd.get(), {reinterpret_cast<uint8_t*>(&ehdr), sizeof(ehdr)}, 0, path);
      !r) {
    return bad("not an ELF file");
  }
  if (std::memcmp(ehdr.e_ident, ELFMAG, SELFMAG) != 0 || ehdr.e_ident[EI_CLASS] != ELFCLASS64 ||
      ehdr.e_ident[EI_DATA] != ELFDATA2LSB || ehdr.e_machine != EM_X86_64) {
    return bad("not a 64-bit little-endian x86-64 ELF file (boot the vmlinux, not a bzImage)");
  }
  if (ehdr.e_phentsize != sizeof(Elf64_Phdr) || ehdr.e_phnum == 0 ||
      ehdr.e_phnum > kMaxProgramHeaders) {
    return bad("unexpected program header table");
  }
  std::vector<Elf64_Phdr> phdrs(ehdr.e_phnum);
  if (auto r = PreadExact(
          fd.get(), {reinterpret_cast<uint8_t*>(phdrs.data()), phdrs.size() * sizeof(Elf64_Phdr)},
          ehdr.e_phoff, path);
      !r) {
    return Fail(std::move(r.error()));
  }

  LoadedKernel kernel{.entry = 0, .end = 0};
  std::optional<uint64_t> entry;
  for (const Elf64_Phdr& ph : phdrs) {
    if (ph.p_type == PT_LOAD) {
      if (ph.p_filesz > ph.p_memsz) return bad("a segment's file size exceeds its memory size");
      auto slice = memory.Slice(ph.p_paddr, ph.p_memsz);
      if (!slice) {
        return bad(fmt::format("segment at {:#x} (+{:#x}) lies outside guest RAM", ph.p_paddr,
                               ph.p_memsz));
      }
      if (auto r = PreadExact(fd.get(), slice->first(ph.p_filesz), ph.p_offset, path); !r) {
        return Fail(std::move(r.error()));
      }
      std::memset(slice->data() + ph.p_filesz, 0, ph.p_memsz - ph.p_filesz);
      kernel.end = std::max(kernel.end, ph.p_paddr + ph.p_memsz);
    } else if (ph.p_type == PT_NOTE && !entry) {
      if (ph.p_filesz > kMaxNoteSegment) return bad("oversized note segment");
      std::vector<uint8_t> notes(ph.p_filesz);
      if (auto r = PreadExact(fd.get(), notes, ph.p_offset, path); !r) {
        return Fail(std::move(r.error()));
      }
      entry = FindPvhEntry(notes);
    }
  }
  if (!entry) return bad("no PVH entry note (the kernel needs CONFIG_PVH=y)");
  if (kernel.end == 0) return bad("no loadable segment");
  kernel.entry = *entry;
  return kernel;
}

Result<void> LoadInitramfs(const GuestMemory& memory, const BootLayout& layout,
                           const std::string& path) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return Fail(Error::HostIo(fmt::format("opening initramfs {}", path), errno));
  auto slice = memory.Slice(layout.initramfs_addr, layout.initramfs_size);
  if (!slice) return Fail(Error::Backend("the initramfs was placed outside guest RAM"));
  return PreadExact(fd.get(), *slice, 0, path);
}

kvm_segment BootSegment(uint16_t selector) {
  const GdtSegment& s = kBootGdt.at(selector >> 3);
  bool granular = (s.flags >> 15) & 1;
  bool present = (s.flags >> 7) & 1;
  return kvm_segment{
      .base = s.base,
      .limit = granular ? (s.limit << 12) | 0xfff : s.limit,
      .selector = selector,
      .type = static_cast<uint8_t>(s.flags & 0xf),
      .present = present,
      .dpl = static_cast<uint8_t>((s.flags >> 5) & 3),
      .db = static_cast<uint8_t>((s.flags >> 14) & 1),
      .s = static_cast<uint8_t>((s.flags >> 4) & 1),
      .l = static_cast<uint8_t>((s.flags >> 13) & 1),
      .g = granular,
      .avl = static_cast<uint8_t>((s.flags >> 12) & 1),
      .unusable = !present,
      .padding = 0,
  };
}

Result<void> WriteBootInfo(const GuestMemory& memory, const BootLayout& layout,
                           std::string_view cmdline) {
  if (cmdline.size() + 1 > kMaxCmdlineSize) {
    return Fail(Error::InvalidConfig(
        "cmdline", fmt::format("the kernel command line is {} bytes; at most {} fit",
                               cmdline.size(), kMaxCmdlineSize - 1)));
  }
  if (cmdline.find('\0') != std::string_view::npos) {
    return Fail(Error::InvalidConfig("cmdline", "the kernel command line contains a NUL byte"));
  }
  auto fail = [] { return Fail(Error::Backend("boot information does not fit in guest RAM")); };

  std::array<uint64_t, kBootGdt.size()> gdt;
  for (size_t i = 0; i < kBootGdt.size(); ++i) gdt[i] = EncodeDescriptor(kBootGdt[i]);
  if (!memory.WriteObj(kBootGdtAddr, gdt)) return fail();

  auto cmd = memory.Slice(kCmdlineAddr, cmdline.size() + 1);
  if (!cmd) return fail();
  std::memcpy(cmd->data(), cmdline.data(), cmdline.size());
  (*cmd)[cmdline.size()] = 0;

  std::vector<HvmMemmapEntry> memmap;
  for (const MemoryMapEntry& e : layout.memory_map) {
    memmap.push_back({.addr = e.addr, .size = e.size, .type = static_cast<uint32_t>(e.type)});
  }
  if (!memory.Write(kMemmapAddr, {reinterpret_cast<const uint8_t*>(memmap.data()),
                                  memmap.size() * sizeof(HvmMemmapEntry)})) {
    return fail();
  }

  HvmStartInfo info{
      .magic = kHvmStartMagic,
      .version = 1,
      .flags = 0,
      .nr_modules = 0,
      .modlist_paddr = 0,
      .cmdline_paddr = kCmdlineAddr,
      .rsdp_paddr = 0,
      .memmap_paddr = kMemmapAddr,
      .memmap_entries = static_cast<uint32_t>(memmap.size()),
      .reserved = 0,
  };
  if (layout.initramfs_size > 0) {
    HvmModlistEntry module{.paddr = layout.initramfs_addr,
                           .size = layout.initramfs_size,
                           .cmdline_paddr = 0,
                           .reserved = 0};
    if (!memory.WriteObj(kModlistAddr, module)) return fail();
    info.nr_modules = 1;
    info.modlist_paddr = kModlistAddr;
  }
  if (!memory.WriteObj(kStartInfoAddr, info)) return fail();
  return {};
}

std::string GuestCmdline(std::string_view configured, std::span<const uint32_t> slots) {
  std::string devices;
  for (uint32_t slot : slots) {
    devices += fmt::format("virtio_mmio.device=4K@{:#x}:{} ",
                           kVirtioMmioBase + slot * kVirtioMmioSize, kVirtioFirstGsi + slot);
  }
  // The kernel hands everything after a "--" argument to init, so kernel parameters go
  // before it. Arguments are split at spaces outside double quotes, as the kernel does.
  size_t init_args = configured.size();
  bool quoted = false;
  for (size_t i = 0; i < configured.size(); ++i) {
    char c = configured[i];
    if (c == '"') quoted = !quoted;
    bool starts_arg = !quoted && c != ' ' && (i == 0 || configured[i - 1] == ' ');
    if (starts_arg && configured.substr(i, 2) == "--" &&
        (i + 2 == configured.size() || configured[i + 2] == ' ')) {
      init_args = i;
      break;
    }
  }
  std::string kernel_args(configured.substr(0, init_args));
  while (!kernel_args.empty() && kernel_args.back() == ' ') kernel_args.pop_back();
  if (!devices.empty()) {
    devices.pop_back();
    if (!kernel_args.empty()) kernel_args += ' ';
    kernel_args += devices;
  }
  if (init_args == configured.size()) return kernel_args;
  if (kernel_args.empty()) return std::string(configured.substr(init_args));
  return kernel_args + " " + std::string(configured.substr(init_args));
}

}  // namespace vessel::vmm
