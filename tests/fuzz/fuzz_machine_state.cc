// vessel-vmm's machine-state decoder: a state file is read from disk and may be corrupt
// or hostile.
//
// Invariants, any break of which aborts:
//   - what decodes is within the format's bounds, and encodes again to the very bytes it
//     was decoded from (the decoder takes only exact encodings);
//   - what does not decode is a kSnapshotFormat error.
#include <cstddef>
#include <cstdint>
#include <span>

#include "invariant.h"
#include "vmm/arch/x86/machine_state.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using vessel::fuzz::Check;
  namespace vmm = vessel::vmm;
  std::span<const uint8_t> input(data, size);
  auto state = vmm::DecodeMachineState(input);
  if (!state) {
    Check(state.error().kind() == vessel::ErrorKind::kSnapshotFormat,
          "a state that does not decode is a SnapshotFormat error");
    return 0;
  }
  Check(!state->vcpus.empty() && state->vcpus.size() <= vmm::kMaxStateVcpus,
        "a decoded state has 1 to kMaxStateVcpus vCPUs");
  Check(state->devices.size() <= vmm::kMaxStateDevices, "at most kMaxStateDevices devices");
  auto again = vmm::EncodeMachineState(*state);
  Check(again.has_value(), "a decoded state encodes");
  Check(again->size() == size && std::equal(again->begin(), again->end(), input.begin()),
        "a decoded state encodes to the bytes it came from");
  return 0;
}
