// The encoding of saved VMM state: fixed-width little-endian fields in order, written by
// StateWriter and read back by StateReader, which refuses anything truncated as
// kSnapshotFormat. The machine state and every device's state use it.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "vessel/error.h"

namespace vessel::vmm {

static_assert(std::endian::native == std::endian::little,
              "saved state is x86-64's, little-endian, and written natively");

class StateWriter {
 public:
  template <typename T>
  void Put(const T& value) {
    static_assert(std::is_trivially_copyable_v<T>);
    Bytes({reinterpret_cast<const uint8_t*>(&value), sizeof(T)});
  }
  void Bytes(std::span<const uint8_t> bytes) {
    out_.insert(out_.end(), bytes.begin(), bytes.end());
  }
  // A record: its tag and u32 length, then what `body` writes.
  template <typename Tag, typename Body>
  void Record(Tag tag, Body body) {
    Put(static_cast<uint32_t>(tag));
    size_t at = out_.size();
    Put(uint32_t{0});
    body();
    auto length = static_cast<uint32_t>(out_.size() - at - sizeof(uint32_t));
    std::memcpy(out_.data() + at, &length, sizeof(length));
  }
  [[nodiscard]] std::vector<uint8_t> Take() { return std::move(out_); }

 private:
  std::vector<uint8_t> out_;
};

// Reads fields in order. Two styles: Take and Get return each field's error; Read latches
// the first error and returns zeros after it, for Finish to report, so a decoder can read
// a whole record and check it once. Errors read "<subject>: <what> is truncated".
class StateReader {
 public:
  StateReader(std::span<const uint8_t> bytes, std::string subject)
      : bytes_(bytes), subject_(std::move(subject)) {}
  [[nodiscard]] bool empty() const { return bytes_.empty(); }
  [[nodiscard]] size_t size() const { return bytes_.size(); }

  [[nodiscard]] Result<std::span<const uint8_t>> Take(size_t n, std::string_view what) {
    if (n > bytes_.size()) return Fail(Malformed(std::string(what) + " is truncated"));
    auto taken = bytes_.first(n);
    bytes_ = bytes_.subspan(n);
    return taken;
  }
  template <typename T>
  [[nodiscard]] Result<void> Get(T& value, std::string_view what) {
    static_assert(std::is_trivially_copyable_v<T>);
    auto bytes = Take(sizeof(T), what);
    if (!bytes) return Fail(std::move(bytes).error());
    std::memcpy(&value, bytes->data(), sizeof(T));
    return {};
  }

  template <typename T>
  [[nodiscard]] T Read(std::string_view what) {
    T value{};
    if (error_) return value;
    if (auto got = Get(value, what); !got) error_ = std::move(got).error();
    return value;
  }
  // A byte that must be 0 or 1.
  [[nodiscard]] bool ReadBool(std::string_view what) {
    auto byte = Read<uint8_t>(what);
    if (byte > 1 && !error_) error_ = Malformed(std::string(what) + " is not 0 or 1");
    return byte == 1;
  }
  // `n` bytes; empty after an error.
  [[nodiscard]] std::span<const uint8_t> ReadBytes(size_t n, std::string_view what) {
    if (error_) return {};
    auto bytes = Take(n, what);
    if (!bytes) {
      error_ = std::move(bytes).error();
      return {};
    }
    return *bytes;
  }
  // No Read has failed yet.
  [[nodiscard]] bool ok() const { return !error_; }
  // The first error of Read, else an error when bytes are left over.
  [[nodiscard]] Result<void> Finish() {
    if (error_) return Fail(*error_);
    if (!bytes_.empty()) {
      return Fail(Malformed(std::to_string(bytes_.size()) + " bytes after the end"));
    }
    return {};
  }
  // Reads the leading u32 version, which must be `expected`.
  [[nodiscard]] Result<void> Version(uint32_t expected) {
    uint32_t version = 0;
    if (auto got = Get(version, "the version"); !got) return got;
    if (version != expected) {
      return Fail(Malformed("version " + std::to_string(version) + ", this vessel-vmm reads " +
                            std::to_string(expected)));
    }
    return {};
  }

  // "<subject>: <what>" as kSnapshotFormat.
  [[nodiscard]] Error Malformed(std::string_view what) const {
    return Error::SnapshotFormat(subject_ + ": " + std::string(what));
  }

 private:
  std::span<const uint8_t> bytes_;
  std::string subject_;
  std::optional<Error> error_;
};

}  // namespace vessel::vmm
