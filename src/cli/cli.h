// What the CLI's commands share: exit statuses, error reporting, and the entry point of
// each command.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

#include "cli/args.h"
#include "vessel/error.h"

namespace vessel::cli {

// Exit statuses of `run` and `exec` besides the command's own.
inline constexpr int kExitTimedOut = 124;
inline constexpr int kExitVesselError = 125;
// `snapshot verify`: the snapshot is damaged, or no snapshot (125: it could not check).
inline constexpr int kExitSnapshotDamaged = 1;

// Text as the bytes base/io.h writes.
inline std::span<const uint8_t> AsBytes(std::string_view text) {
  return {reinterpret_cast<const uint8_t*>(text.data()), text.size()};
}

// Prints "vessel: <message>" on stderr.
void PrintError(std::string_view message);
// PrintError(message); returns kExitVesselError.
int Failure(std::string_view message);
int Failure(const Error& error);

int Run(const RunArgs& args);
int Doctor();
int Create(const CreateArgs& args);
int Exec(const ExecArgs& args);
int Copy(const CopyArgs& args);
int List(const ListArgs& args);
int Remove(const RemoveArgs& args);
int Net(const NetArgs& args);
int Snapshot(const SnapshotArgs& args);
int Verify(const VerifyArgs& args);
int SnapshotImport(const SnapshotImportArgs& args);
int Restore(const RestoreArgs& args);
int Fork(const ForkArgs& args);
int ImageBuild(const ImageBuildArgs& args);
int ImageImport(const ImageImportArgs& args);
int ImageList(const ImageListArgs& args);
int ImageRemove(const ImageRemoveArgs& args);
int Serve(const ServeArgs& args);
int Mcp();

}  // namespace vessel::cli
