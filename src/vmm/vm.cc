#include "vmm/vm.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdio>
#include <cstring>

#include "base/io.h"
#include "vmm/arch/x86/boot.h"
#include "vmm/arch/x86/cpuid.h"
#include "vmm/arch/x86/mptable.h"
#include "vmm/arch/x86/registers.h"
#include "vmm/core/data_pages.h"
#include "vmm/core/ioctl.h"
#include "vmm/devices/i8042/i8042.h"
#include "vmm/devices/virtio/mmio_transport.h"
#include "vmm/devices/virtio_blk/virtio_blk.h"
#include "vmm/devices/virtio_console/virtio_console.h"
#include "vmm/devices/vsock/virtio_vsock.h"

namespace vessel::vmm {
namespace {

constexpr int kKvmApiVersion = 12;
// Three pages of the 32-bit hole, below the IOAPIC, that Intel's KVM uses for the real-mode
// TSS and the identity-mapped page table; no device lives there.
constexpr uint64_t kTssAddr = 0xfffb'd000;
constexpr uint64_t kIdentityMapAddr = 0xfffb'c000;
constexpr uint32_t kMaxCpuidEntries = 256;

// struct kvm_cpuid2 with room for its entries. The uapi header's own definition cannot be
// used from C++: its __DECLARE_FLEX_ARRAY adds an empty struct (one byte in C++), which
// moves the entries and changes the size encoded in KVM_GET_SUPPORTED_CPUID/KVM_SET_CPUID2.
struct CpuidTable {
  uint32_t nent;
  uint32_t padding;
  kvm_cpuid_entry2 entries[kMaxCpuidEntries];
};
struct CpuidHeader {
  uint32_t nent;
  uint32_t padding;
};
static_assert(offsetof(CpuidTable, entries) == sizeof(CpuidHeader));
constexpr unsigned long kKvmGetSupportedCpuid = _IOWR(KVMIO, 0x05, CpuidHeader);
constexpr unsigned long kKvmSetCpuid2 = _IOW(KVMIO, 0x90, CpuidHeader);
constexpr auto kPauseTimeout = std::chrono::seconds(5);

// Requests are `unsigned long` in the kernel's ioctl; the macros make int constants.
class IrqLine : public Interrupt {
 public:
  explicit IrqLine(UniqueFd fd) : fd_(std::move(fd)) {}
  void Trigger() override {
    uint64_t one = 1;
    // EAGAIN means the counter is already pending: the edge will be delivered.
    [[maybe_unused]] ssize_t n = ::write(fd_.get(), &one, sizeof(one));
  }

 private:
  UniqueFd fd_;
};

void OnKick(int) {}

}  // namespace

Result<std::unique_ptr<Vm>> Vm::Create(const VmConfig& config, UniqueFd memory_file) {
  std::unique_ptr<Vm> vm(new Vm());
  UniqueFd stopped(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!stopped) return Fail(Error::HostIo("eventfd", errno));
  vm->stopped_ = std::move(stopped);
  if (auto r = vm->SetUpKvm(config, std::move(memory_file)); !r)
    return Fail(std::move(r).error().Context("setting up KVM"));
  if (auto r = vm->SetUpDevices(config); !r) {
    return Fail(std::move(r).error().Context("setting up devices"));
  }
  if (config.memory == MemorySource::kPrivate) {
    vm->restore_pending_ = true;  // a saved VM's memory: its state comes with Restore()
  } else if (auto r = vm->LoadGuest(config); !r) {
    return Fail(std::move(r).error().Context("loading the guest"));
  }
  if (auto r = vm->SetUpVcpus(config); !r) {
    return Fail(std::move(r).error().Context("setting up vCPUs"));
  }
  return vm;
}

Result<void> Vm::SetUpKvm(const VmConfig& config, UniqueFd memory_file) {
  kvm_ = UniqueFd(open("/dev/kvm", O_RDWR | O_CLOEXEC));
  if (!kvm_) {
    return Fail(
        Error::UnsupportedPlatform(fmt::format("cannot open /dev/kvm: {}", std::strerror(errno))));
  }
  if (Ioctl(kvm_.get(), KVM_GET_API_VERSION, 0) != kKvmApiVersion) {
    return Fail(Error::UnsupportedPlatform("unexpected KVM API version"));
  }
  for (auto [cap, name] : {std::pair{KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP"},
                           {KVM_CAP_PIT2, "KVM_CAP_PIT2"},
                           {KVM_CAP_IRQFD, "KVM_CAP_IRQFD"},
                           {KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT"},
                           {KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY"}}) {
    if (Ioctl(kvm_.get(), KVM_CHECK_EXTENSION, cap) <= 0) {
      return Fail(Error::UnsupportedPlatform(fmt::format("KVM lacks {}", name)));
    }
  }
  vm_fd_ = UniqueFd(Ioctl(kvm_.get(), KVM_CREATE_VM, 0));
  if (!vm_fd_) return Fail(KvmError("KVM_CREATE_VM"));
  if (Ioctl(vm_fd_.get(), KVM_SET_TSS_ADDR, static_cast<unsigned long>(kTssAddr)) < 0) {
    return Fail(KvmError("KVM_SET_TSS_ADDR"));
  }
  uint64_t identity_map = kIdentityMapAddr;
  if (Ioctl(vm_fd_.get(), KVM_SET_IDENTITY_MAP_ADDR, &identity_map) < 0) {
    return Fail(KvmError("KVM_SET_IDENTITY_MAP_ADDR"));
  }
  if (Ioctl(vm_fd_.get(), KVM_CREATE_IRQCHIP, 0) < 0) return Fail(KvmError("KVM_CREATE_IRQCHIP"));
  kvm_pit_config pit{};
  pit.flags = KVM_PIT_SPEAKER_DUMMY;  // port 0x61 answered in the kernel
  if (Ioctl(vm_fd_.get(), KVM_CREATE_PIT2, &pit) < 0) return Fail(KvmError("KVM_CREATE_PIT2"));

  const uint64_t size = config.memory_mib << 20;
  auto memory =
      config.memory == MemorySource::kOwn
          ? GuestMemory::Create(size)
          : GuestMemory::Map(std::move(memory_file), size, config.memory == MemorySource::kShared);
  if (!memory) return Fail(std::move(memory).error());
  memory_ = std::make_unique<GuestMemory>(std::move(*memory));
  uint32_t slot = 0;
  for (const GuestMemory::Region& r : memory_->regions()) {
    kvm_userspace_memory_region region{
        .slot = slot++,
        .flags = 0,
        .guest_phys_addr = r.guest_addr,
        .memory_size = r.size,
        .userspace_addr = reinterpret_cast<uint64_t>(memory_->host_base() + r.offset),
    };
    if (Ioctl(vm_fd_.get(), KVM_SET_USER_MEMORY_REGION, &region) < 0) {
      return Fail(KvmError("KVM_SET_USER_MEMORY_REGION"));
    }
  }
  return {};
}

Result<std::shared_ptr<Interrupt>> Vm::MakeIrqLine(uint32_t gsi) {
  UniqueFd fd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!fd) return Fail(Error::HostIo("eventfd for an interrupt", errno));
  kvm_irqfd irqfd{};
  irqfd.fd = static_cast<uint32_t>(fd.get());
  irqfd.gsi = gsi;
  if (Ioctl(vm_fd_.get(), KVM_IRQFD, &irqfd) < 0) {
    return Fail(KvmError(fmt::format("KVM_IRQFD for GSI {}", gsi)));
  }
  return std::make_shared<IrqLine>(std::move(fd));
}

Result<void> Vm::AddVirtioDevice(uint32_t slot, std::string name,
                                 std::unique_ptr<virtio::VirtioDevice> device) {
  auto irq = MakeIrqLine(kVirtioFirstGsi + slot);
  if (!irq) return Fail(std::move(irq).error());
  auto transport = std::make_unique<virtio::MmioTransport>(*memory_, std::move(device), *irq);
  mmio_bus_.Insert(kVirtioMmioBase + slot * kVirtioMmioSize, kVirtioMmioSize, transport.get());
  transports_.push_back(transport.get());
  stateful_.emplace_back(std::move(name), transport.get());
  mmio_devices_.push_back(std::move(transport));
  virtio_slots_.push_back(slot);
  return {};
}

std::string Vm::DumpState() {
  std::string out;
  {
    std::lock_guard lock(mutex_);
    out =
        fmt::format("state dump: vm {}, {} vCPUs, {} parked, {} exited; unclaimed pio={} mmio={}\n",
                    ToString(state_), vcpus_.size(), parked_, exited_, unknown_pio_.load(),
                    unknown_mmio_.load());
  }
  for (size_t i = 0; i < transports_.size(); ++i) {
    out += fmt::format("virtio slot {}: {}", virtio_slots_[i], transports_[i]->DescribeState());
  }
  if (serial_) serial_->Receive(kGuestDumpRequest);
  return out;
}

Result<void> Vm::SetUpDevices(const VmConfig& config) {
  auto loop = EventLoop::Create();
  if (!loop) return Fail(std::move(loop).error());
  loop_ = std::move(*loop);

  UniqueFd log(
      open(config.console_log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOCTTY, 0600));
  if (!log) return Fail(Error::HostIo(fmt::format("opening {}", config.console_log), errno));
  auto serial_irq = MakeIrqLine(kCom1Irq);
  if (!serial_irq) return Fail(std::move(serial_irq).error());
  auto serial = std::make_unique<Serial>(std::move(log), *serial_irq);
  serial_ = serial.get();
  stateful_.emplace_back("serial", serial.get());
  pio_bus_.Insert(kCom1Port, kCom1PortCount, serial.get());
  pio_devices_.push_back(std::move(serial));

  auto i8042 = std::make_unique<I8042>([this] {
    GuestStopped(VmState::kShutdown, "the guest reset the VM through the keyboard controller");
  });
  pio_bus_.Insert(kI8042DataPort, 1, i8042.get(), 0);
  pio_bus_.Insert(kI8042CommandPort, 1, i8042.get(), kI8042CommandOffset);
  stateful_.emplace_back("i8042", i8042.get());
  pio_devices_.push_back(std::move(i8042));

  if (config.vsock) {
    auto vsock = MakeVirtioVsock(*loop_, config.vsock->cid, config.vsock->uds);
    if (!vsock) return Fail(std::move(vsock).error().Context("virtio-vsock"));
    if (auto r = AddVirtioDevice(kVsockSlot, "virtio-vsock", std::move(*vsock)); !r) return r;
  }
  if (!config.agent_port.empty()) {
    auto console = MakeVirtioConsole(*loop_, config.agent_port, std::string(kAgentPortName));
    if (!console) return Fail(std::move(console).error().Context("virtio-console"));
    if (auto r = AddVirtioDevice(kConsoleSlot, "virtio-console", std::move(*console)); !r) {
      return r;
    }
  }
  if (!config.disk.empty()) {
    auto disk = MakeVirtioBlk(config.disk);
    if (!disk) return Fail(std::move(disk).error().Context("virtio-blk"));
    if (auto r = AddVirtioDevice(kDiskSlot, "virtio-blk", std::move(*disk)); !r) return r;
  }
  return {};
}

Result<void> Vm::LoadGuest(const VmConfig& config) {
  auto kernel = LoadPvhKernel(*memory_, config.kernel);
  if (!kernel) return Fail(std::move(kernel).error());
  entry_ = kernel->entry;

  uint64_t initramfs_size = 0;
  if (!config.initramfs.empty()) {
    struct stat st;
    if (stat(config.initramfs.c_str(), &st) != 0) {
      return Fail(Error::HostIo(fmt::format("initramfs {}", config.initramfs), errno));
    }
    initramfs_size = static_cast<uint64_t>(st.st_size);
  }
  auto layout = PlanBootLayout(memory_->size(), kernel->end, initramfs_size);
  if (!layout) return Fail(std::move(layout).error());
  if (initramfs_size > 0) {
    if (auto r = LoadInitramfs(*memory_, *layout, config.initramfs); !r) return r;
  }
  if (auto r = WriteBootInfo(*memory_, *layout, GuestCmdline(config.cmdline, virtio_slots_)); !r) {
    return r;
  }
  auto mptable = BuildMpTable(config.vcpus);
  if (!mptable) return Fail(std::move(mptable).error());
  if (!memory_->Write(kMpTableAddr, *mptable)) {
    return Fail(Error::Backend("the MP table does not fit in guest RAM"));
  }
  return {};
}

Result<void> Vm::SetUpVcpus(const VmConfig& config) {
  int run_size = Ioctl(kvm_.get(), KVM_GET_VCPU_MMAP_SIZE, 0);
  if (run_size < static_cast<int>(sizeof(kvm_run))) return Fail(KvmError("KVM_GET_VCPU_MMAP_SIZE"));

  auto table = std::make_unique<CpuidTable>();
  table->nent = kMaxCpuidEntries;
  if (Ioctl(kvm_.get(), kKvmGetSupportedCpuid, table.get()) < 0) {
    return Fail(KvmError("KVM_GET_SUPPORTED_CPUID"));
  }
  std::vector<kvm_cpuid_entry2> supported(table->entries,
                                          table->entries + std::min(table->nent, kMaxCpuidEntries));
  const bool tsc_deadline_timer =
      Ioctl(kvm_.get(), KVM_CHECK_EXTENSION, KVM_CAP_TSC_DEADLINE_TIMER) > 0;

  for (uint32_t i = 0; i < config.vcpus; ++i) {
    auto created = Vcpu::Create(vm_fd_.get(), i, static_cast<size_t>(run_size));
    if (!created) return Fail(std::move(created).error());
    std::unique_ptr<Vcpu> vcpu = std::move(*created);

    std::vector<kvm_cpuid_entry2> entries =
        CpuidForVcpu(supported, i, config.vcpus, tsc_deadline_timer);
    auto set = std::make_unique<CpuidTable>();
    set->nent = static_cast<uint32_t>(std::min<size_t>(entries.size(), kMaxCpuidEntries));
    std::copy_n(entries.begin(), set->nent, set->entries);
    if (Ioctl(vcpu->fd(), kKvmSetCpuid2, set.get()) < 0) return Fail(KvmError("KVM_SET_CPUID2"));
    if (i == 0) {
      // What a snapshot of a vCPU takes here: every vCPU has this CPUID.
      auto layout = ProbeVcpuStateLayout(kvm_.get(), vm_fd_.get(), vcpu->fd());
      if (!layout) return Fail(std::move(layout).error());
      vcpu_layout_ = std::move(*layout);
    }

    kvm_lapic_state lapic{};
    if (Ioctl(vcpu->fd(), KVM_GET_LAPIC, &lapic) < 0) return Fail(KvmError("KVM_GET_LAPIC"));
    SetUpLapicLint(lapic);
    if (Ioctl(vcpu->fd(), KVM_SET_LAPIC, &lapic) < 0) return Fail(KvmError("KVM_SET_LAPIC"));

    // Application processors wait for INIT/SIPI in the in-kernel APIC; only the bootstrap
    // processor gets the PVH entry state.
    if (i == 0) {
      kvm_sregs sregs{};
      if (Ioctl(vcpu->fd(), KVM_GET_SREGS, &sregs) < 0) return Fail(KvmError("KVM_GET_SREGS"));
      SetPvhEntrySregs(sregs);
      if (Ioctl(vcpu->fd(), KVM_SET_SREGS, &sregs) < 0) return Fail(KvmError("KVM_SET_SREGS"));

      kvm_regs regs = PvhEntryRegs(entry_);
      if (Ioctl(vcpu->fd(), KVM_SET_REGS, &regs) < 0) return Fail(KvmError("KVM_SET_REGS"));

      kvm_fpu fpu = PowerOnFpu();
      if (Ioctl(vcpu->fd(), KVM_SET_FPU, &fpu) < 0) return Fail(KvmError("KVM_SET_FPU"));
    }
    vcpus_.push_back(std::move(vcpu));
  }
  return {};
}

Result<void> Vm::Start(const std::function<Result<void>()>& confine) {
  {
    std::lock_guard lock(mutex_);
    if (started_) return Fail(Error::Backend("the VM was already started"));
    if (restore_pending_) return Fail(Error::Backend("a saved VM's state must be restored first"));
    started_ = true;
    state_ = VmState::kRunning;
  }
  struct sigaction action {};
  action.sa_handler = OnKick;  // no SA_RESTART: KVM_RUN must return EINTR
  sigemptyset(&action.sa_mask);
  if (sigaction(kKickSignal, &action, nullptr) != 0) {
    return Fail(Error::HostIo("installing the vCPU kick handler", errno));
  }
  io_thread_ = std::thread([this] {
    ThreadReady();
    loop_->Run();
  });
  for (auto& vcpu : vcpus_) {
    Vcpu* v = vcpu.get();
    vcpu->thread() = std::thread([this, v] { RunVcpu(*v); });
  }
  // A new thread makes system calls of its own before it runs its function (robust futex
  // list, rseq): wait for them, so that a seccomp filter installed next meets none.
  {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return threads_ready_ == vcpus_.size() + 1; });
  }
  if (confine) {
    if (auto r = confine(); !r) {
      Stop();
      return r;
    }
  }
  std::lock_guard lock(mutex_);
  guest_released_ = true;
  changed_.notify_all();
  return {};
}

void Vm::ThreadReady() {
  std::lock_guard lock(mutex_);
  ++threads_ready_;
  changed_.notify_all();
}

void Vm::KickVcpus() {
  for (auto& vcpu : vcpus_) vcpu->Kick();
}

Result<void> Vm::Pause() {
  std::unique_lock lock(mutex_);
  if (state_ == VmState::kPaused) return {};
  if (state_ != VmState::kRunning) {
    return Fail(Error::Backend(fmt::format("cannot pause: the VM is {}", ToString(state_))));
  }
  pause_requested_ = true;
  KickVcpus();
  uint32_t count = static_cast<uint32_t>(vcpus_.size());
  if (!changed_.wait_for(lock, kPauseTimeout,
                         [&] { return parked_ + exited_ == count || stop_requested_; })) {
    pause_requested_ = false;
    changed_.notify_all();
    return Fail(Error::Backend("vCPUs did not stop in time"));
  }
  if (stop_requested_) {
    return Fail(Error::Backend(fmt::format("cannot pause: the VM is {}", ToString(state_))));
  }
  state_ = VmState::kPaused;
  return {};
}

Result<void> Vm::Resume() {
  std::lock_guard lock(mutex_);
  if (state_ == VmState::kRunning) return {};
  if (state_ != VmState::kPaused) {
    return Fail(Error::Backend(fmt::format("cannot resume: the VM is {}", ToString(state_))));
  }
  pause_requested_ = false;
  state_ = VmState::kRunning;
  changed_.notify_all();
  return {};
}

VmState Vm::state() const {
  std::lock_guard lock(mutex_);
  return state_;
}

std::string Vm::stop_reason() const {
  std::lock_guard lock(mutex_);
  return stop_reason_;
}

void Vm::GuestStopped(VmState state, std::string reason) {
  {
    std::lock_guard lock(mutex_);
    if (stop_requested_) return;
    stop_requested_ = true;
    if (state == VmState::kShutdown && serial_ && serial_->saw_panic()) {
      state = VmState::kGuestPanicked;
      reason += " after a kernel panic";
    }
    state_ = state;
    stop_reason_ = std::move(reason);
    changed_.notify_all();
  }
  KickVcpus();
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(stopped_.get(), &one, sizeof(one));
}

void Vm::Stop() {
  {
    std::lock_guard lock(mutex_);
    stop_requested_ = true;
    changed_.notify_all();
  }
  KickVcpus();
  for (auto& vcpu : vcpus_) {
    if (vcpu->thread().joinable()) vcpu->thread().join();
  }
  if (loop_) loop_->Stop();
  if (io_thread_.joinable()) io_thread_.join();
  if (serial_) serial_->Flush();
}

Vm::~Vm() {
  Stop();
  // Devices hold registrations in the loop and references to memory: they go first.
  mmio_devices_.clear();
  pio_devices_.clear();
}

void Vm::RunVcpu(Vcpu& vcpu) {
  // The kick signal must reach this thread; every other signal stays with the main thread.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, kKickSignal);
  pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
  ThreadReady();
  {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return guest_released_ || stop_requested_; });
  }

  for (;;) {
    if (!ParkWhilePaused(vcpu)) break;
    int rc = ::ioctl(vcpu.fd(), KVM_RUN, 0);
    if (rc < 0) {
      if (errno == EINTR || errno == EAGAIN) {
        std::atomic_ref<uint8_t>(vcpu.run().immediate_exit).store(0);
        continue;
      }
      int saved = errno;
      GuestStopped(VmState::kFailed, fmt::format("KVM_RUN failed on vCPU {}: {}", vcpu.index(),
                                                 std::strerror(saved)));
      break;
    }
    if (!HandleExit(vcpu)) break;
  }
  std::lock_guard lock(mutex_);
  ++exited_;
  changed_.notify_all();
}

bool Vm::HandleExit(Vcpu& vcpu) {
  kvm_run& run = vcpu.run();
  switch (run.exit_reason) {
    case KVM_EXIT_IO: vcpu.HandleIo(pio_bus_, unknown_pio_); return true;
    case KVM_EXIT_MMIO: vcpu.HandleMmio(mmio_bus_, unknown_mmio_); return true;
    case KVM_EXIT_INTR: return true;
    case KVM_EXIT_HLT:
      GuestStopped(VmState::kShutdown, fmt::format("vCPU {} halted", vcpu.index()));
      return false;
    case KVM_EXIT_SHUTDOWN: {
      // A triple fault: a guest's reboot=t, or a vCPU that faulted while handling a fault.
      // Where it stood tells the two apart.
      std::string registers = vcpu.DescribeRegisters();
      GuestStopped(VmState::kShutdown,
                   fmt::format("the guest reset the VM (shutdown exit on vCPU {}{}{})",
                               vcpu.index(), registers.empty() ? "" : ": ", registers));
      return false;
    }
    case KVM_EXIT_SYSTEM_EVENT:
      switch (run.system_event.type) {
        case KVM_SYSTEM_EVENT_CRASH:
          GuestStopped(VmState::kGuestPanicked, "the guest reported a crash");
          break;
        case KVM_SYSTEM_EVENT_RESET:
          GuestStopped(VmState::kShutdown, "the guest reset the VM");
          break;
        default: GuestStopped(VmState::kShutdown, "the guest powered the VM off"); break;
      }
      return false;
    case KVM_EXIT_FAIL_ENTRY:
      LogVcpuFailure(vcpu, fmt::format("entry failed, hardware reason {:#x}",
                                       run.fail_entry.hardware_entry_failure_reason));
      return false;
    case KVM_EXIT_INTERNAL_ERROR:
      LogVcpuFailure(vcpu, fmt::format("KVM internal error, suberror {}", run.internal.suberror));
      return false;
    default:
      LogVcpuFailure(vcpu, fmt::format("unexpected exit reason {}", run.exit_reason));
      return false;
  }
}

bool Vm::ParkWhilePaused(Vcpu& vcpu) {
  {
    std::lock_guard lock(mutex_);
    if (stop_requested_) return false;
    if (!pause_requested_) return true;
  }
  // KVM completes the exit just handled (the data of a port or MMIO read goes into the
  // guest's registers) only on the next KVM_RUN: one that returns at once makes the vCPU's
  // state whole before anyone reads it.
  std::atomic_ref<uint8_t>(vcpu.run().immediate_exit).store(1);
  [[maybe_unused]] int rc = ::ioctl(vcpu.fd(), KVM_RUN, 0);
  std::atomic_ref<uint8_t>(vcpu.run().immediate_exit).store(0);
  std::unique_lock lock(mutex_);
  if (pause_requested_ && !stop_requested_) {
    ++parked_;
    changed_.notify_all();
    changed_.wait(lock, [&] { return !pause_requested_ || stop_requested_; });
    --parked_;
  }
  return !stop_requested_;
}

Result<MachineState> Vm::ReadMachineState() {
  MachineState state;
  if (auto r = SaveVmState(vm_fd_.get(), state); !r) return Fail(std::move(r).error());
  for (auto& vcpu : vcpus_) {
    auto saved = SaveVcpuState(vcpu->fd(), vcpu_layout_);
    if (!saved)
      return Fail(std::move(saved).error().Context(fmt::format("vCPU {}", vcpu->index())));
    state.vcpus.push_back(std::move(*saved));
  }
  for (auto& [name, device] : stateful_) {
    state.devices.push_back(DeviceState{.name = name, .bytes = device->SaveState()});
  }
  return state;
}

Result<void> Vm::Save(int state_file, protocol::vmm_control::SaveMemory memory, int memory_file) {
  using protocol::vmm_control::SaveMemory;
  {
    std::lock_guard lock(mutex_);
    if (state_ != VmState::kPaused) {
      return Fail(Error::Backend(fmt::format("cannot save: the VM is {}", ToString(state_))));
    }
  }
  if (memory == SaveMemory::kFreeze && !memory_->shared()) {
    return Fail(Error::Backend("cannot save in place: the VM's memory is already a private copy"));
  }
  // The devices' host sockets wait meanwhile, so that nothing writes guest memory or
  // changes a device between the state and the memory.
  loop_->Hold();
  auto state = ReadMachineState();
  Result<void> r;
  if (!state) {
    r = Fail(std::move(state).error());
  } else if (auto bytes = EncodeMachineState(*state); !bytes) {
    r = Fail(std::move(bytes).error());
  } else if (auto written = WriteAllAt(state_file, *bytes, 0, "the state file"); !written) {
    r = written;
  } else if (memory == SaveMemory::kFreeze) {
    r = memory_->Freeze();
  } else {
    r = WriteDataPages(*memory_, memory_file);
  }
  loop_->Release();
  return r;
}

Result<void> Vm::Restore(int state_file) {
  if (!restore_pending_) return Fail(Error::Backend("this VM was not created to be restored"));
  auto bytes = ReadAllAt(state_file, kMaxMachineStateBytes, "the state file");
  if (!bytes) return Fail(std::move(bytes).error());
  auto state = DecodeMachineState(*bytes);
  if (!state) return Fail(std::move(state).error());
  if (state->vcpus.size() != vcpus_.size()) {
    return Fail(Error::SnapshotFormat(
        fmt::format("the state has {} vCPUs, this VM {}", state->vcpus.size(), vcpus_.size())));
  }
  if (state->devices.size() != stateful_.size()) {
    return Fail(Error::SnapshotFormat(fmt::format("the state has {} devices, this VM {}",
                                                  state->devices.size(), stateful_.size())));
  }
  for (size_t i = 0; i < stateful_.size(); ++i) {
    if (state->devices[i].name != stateful_[i].first) {
      return Fail(Error::SnapshotFormat(fmt::format("the state has device {} where this VM has {}",
                                                    state->devices[i].name, stateful_[i].first)));
    }
  }
  // The saved memory is final now (a child started ahead mapped it before its parent's
  // save), and nothing has run on this mapping yet.
  if (auto r = memory_->MapHolesAnonymously(); !r) return r;
  if (auto r = LoadVmState(vm_fd_.get(), *state); !r) return r;
  for (size_t i = 0; i < vcpus_.size(); ++i) {
    if (auto r = LoadVcpuState(vcpus_[i]->fd(), state->vcpus[i]); !r) {
      return Fail(std::move(r).error().Context(fmt::format("vCPU {}", i)));
    }
  }
  for (size_t i = 0; i < stateful_.size(); ++i) {
    if (auto r = stateful_[i].second->LoadState(state->devices[i].bytes); !r) {
      return Fail(std::move(r).error().Context(stateful_[i].first));
    }
  }
  restore_pending_ = false;
  return {};
}

void Vm::LogVcpuFailure(Vcpu& vcpu, std::string_view what) {
  std::string detail = vcpu.DescribeRegisters();
  GuestStopped(VmState::kFailed, fmt::format("vCPU {} failed: {}{}{}", vcpu.index(), what,
                                             detail.empty() ? "" : "; ", detail));
}

}  // namespace vessel::vmm
