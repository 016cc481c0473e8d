// vessel: the command-line front end.
//
//   vessel run [options] -- CMD [ARG...]   boot a microVM, run CMD in it, destroy it
//   vessel create / exec / cp / ls / rm     sandboxes that outlive the command
//   vessel snapshot / restore / fork        save, restore and copy those sandboxes
//   vessel net                             their egress: allowlist, counters, refusals
//   vessel serve                           E2B's sandbox API over HTTP
//   vessel doctor                          what this host can run, and what is missing
//
// Exit status of `run` and `exec`: the command's own exit code; 128+N when a signal N
// ended it; 124 when its timeout expired; 125 when Vessel itself failed (bad usage, the
// VM did not boot, the channel broke).
#include <unistd.h>

#include <iostream>
#include <string>
#include <variant>
#include <vector>

#include "base/io.h"
#include "cli/cli.h"
#include "supervisor/supervisor.h"
#include "vessel/sandbox.h"

namespace vessel::cli {
namespace {

template <typename... Fs>
struct Overloaded : Fs... {
  using Fs::operator()...;
};

// The hidden command `create`, `restore` and `fork` start in the background: owns one
// sandbox until SIGTERM.
int Supervise(const SuperviseArgs& args) {
  auto config = supervisor::ParseSupervisorConfig(args.config);
  if (!config) return Failure(config.error());
  return supervisor::RunSupervisor(std::move(*config));
}

}  // namespace

int Run(const RunArgs& args) {
  const ExecOptions& options = args.options;
  auto sandbox = Sandbox::Create(args.config);
  if (!sandbox) {
    std::cerr << "vessel: " << sandbox.error().ToString() << "\n";
    return kExitVesselError;
  }
  auto result = (*sandbox)->Execute(Command::Argv(args.command), options);
  (void)(*sandbox)->Destroy();
  if (!result) {
    std::cerr << "vessel: " << result.error().ToString() << "\n";
    return kExitVesselError;
  }
  // A reader that went away (`| head`) is no failure of the command's.
  (void)WriteAll(STDOUT_FILENO, AsBytes(result->stdout_data), Deadline::Never(), "stdout");
  (void)WriteAll(STDERR_FILENO, AsBytes(result->stderr_data), Deadline::Never(), "stderr");
  if (result->stdout_truncated)
    std::cerr << "vessel: stdout truncated at " << options.output_cap << " bytes\n";
  if (result->stderr_truncated)
    std::cerr << "vessel: stderr truncated at " << options.output_cap << " bytes\n";
  switch (result->outcome) {
    case ExecResult::Outcome::kExited: return result->exit_code;
    case ExecResult::Outcome::kSignaled: return 128 + result->signal;
    case ExecResult::Outcome::kTimedOut:
      std::cerr << "vessel: the command timed out and was killed\n";
      return kExitTimedOut;
  }
  return kExitVesselError;
}

}  // namespace vessel::cli

int main(int argc, char** argv) {
  namespace cli = vessel::cli;
  std::vector<std::string> args(argv + 1, argv + argc);
  auto parsed = cli::ParseArgs(args);
  if (auto* usage = std::get_if<cli::UsageError>(&parsed)) {
    std::cerr << "vessel: " << usage->message << "\n\n" << usage->usage;
    return cli::kExitUsage;
  }
  return std::visit(cli::Overloaded{
                        [](const cli::RunArgs& a) { return cli::Run(a); },
                        [](const cli::CreateArgs& a) { return cli::Create(a); },
                        [](const cli::ExecArgs& a) { return cli::Exec(a); },
                        [](const cli::CopyArgs& a) { return cli::Copy(a); },
                        [](const cli::ListArgs& a) { return cli::List(a); },
                        [](const cli::RemoveArgs& a) { return cli::Remove(a); },
                        [](const cli::NetArgs& a) { return cli::Net(a); },
                        [](const cli::SnapshotArgs& a) { return cli::Snapshot(a); },
                        [](const cli::VerifyArgs& a) { return cli::Verify(a); },
                        [](const cli::SnapshotImportArgs& a) { return cli::SnapshotImport(a); },
                        [](const cli::RestoreArgs& a) { return cli::Restore(a); },
                        [](const cli::ForkArgs& a) { return cli::Fork(a); },
                        [](const cli::DoctorArgs&) { return cli::Doctor(); },
                        [](const cli::ImageBuildArgs& a) { return cli::ImageBuild(a); },
                        [](const cli::ImageImportArgs& a) { return cli::ImageImport(a); },
                        [](const cli::ImageListArgs& a) { return cli::ImageList(a); },
                        [](const cli::ImageRemoveArgs& a) { return cli::ImageRemove(a); },
                        [](const cli::ServeArgs& a) { return cli::Serve(a); },
                        [](const cli::McpArgs&) { return cli::Mcp(); },
                        [](const cli::SuperviseArgs& a) { return cli::Supervise(a); },
                        [](const cli::HelpArgs& a) {
                          std::cout << a.text;
                          return 0;
                        },
                    },
                    std::get<cli::Invocation>(parsed));
}
