// The vessel command line, parsed with CLI11 into one struct per command. No I/O but the
// help text: a usage error comes back as a message for main() to print.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "vessel/sandbox.h"

namespace vessel::cli {

// Exit status of a usage error, as of any failure of Vessel's own.
inline constexpr int kExitUsage = 125;

struct RunArgs {
  SandboxConfig config;
  ExecOptions options;
  std::vector<std::string> command;
};
struct CreateArgs {
  SandboxConfig config;
};
struct ExecArgs {
  std::string target;
  // stdin_data set (empty) when stdin is forwarded; output not capped. With -t, terminal
  // is set to a default size that the command replaces with the size of ours.
  ExecOptions options;
  std::vector<std::string> command;
};
struct CopyArgs {
  std::string from;
  std::string to;
};
struct ListArgs {
  bool json = false;
};
struct RemoveArgs {
  std::vector<std::string> targets;
};
// `net ID`, `net allow ID RULE...`, `net deny ID RULE...`.
struct NetArgs {
  std::string target;
  // Allowlist rules to add and to take out, comma-separated ones split; both empty for
  // `net ID`.
  std::vector<std::string> allow;
  std::vector<std::string> deny;
  bool json = false;
};
struct SnapshotArgs {
  std::string target;
  std::string dir;
};
struct VerifyArgs {
  std::string dir;
};
struct SnapshotImportArgs {
  std::string dir;
};
struct RestoreArgs {
  std::string dir;
  std::string name;
  EngineKind engine = EngineKind::kAuto;
  // Set: the allowlist that replaces the snapshot's (empty: no egress).
  std::optional<std::vector<std::string>> allow_net;
};
struct ForkArgs {
  std::string target;
  std::string count = "1";  // checked by the command, which names the library's range
};
struct DoctorArgs {};
struct ImageBuildArgs {
  std::string name;
  // Space- or comma-separated Debian packages; unset: the built-in recipe of `name`.
  std::optional<std::string> packages;
  std::string suite;   // empty: the recipe's
  std::string mirror;  // empty: the recipe's
};
struct ImageImportArgs {
  std::string name;
  std::string tarball;
};
struct ImageListArgs {
  bool json = false;
};
struct ImageRemoveArgs {
  std::vector<std::string> names;
};
struct ServeArgs {
  std::string listen = "127.0.0.1:3000";  // HOST:PORT
  std::string api_key_file;               // empty: <config dir>/api-key
  std::vector<std::string> pools;         // TEMPLATE=N
};
// `vessel mcp`: the MCP server on stdin and stdout.
struct McpArgs {};
// The hidden command that runs a supervisor (supervisor/launch.h).
struct SuperviseArgs {
  std::string config;  // JSON
};
// --help: the text to print, on stdout.
struct HelpArgs {
  std::string text;
};

using Invocation =
    std::variant<RunArgs, CreateArgs, ExecArgs, CopyArgs, ListArgs, RemoveArgs, NetArgs,
                 SnapshotArgs, VerifyArgs, SnapshotImportArgs, RestoreArgs, ForkArgs, DoctorArgs,
                 ImageBuildArgs, ImageImportArgs, ImageListArgs, ImageRemoveArgs, ServeArgs,
                 McpArgs, SuperviseArgs, HelpArgs>;

// A command line that makes no sense: what is wrong, and the usage of the command it
// tried (the whole program's when none).
struct UsageError {
  std::string message;
  std::string usage;
};

// `args` without the program name.
[[nodiscard]] std::variant<Invocation, UsageError> ParseArgs(const std::vector<std::string>& args);

}  // namespace vessel::cli
