#include "cli/args.h"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <charconv>
#include <chrono>
#include <limits>
#include <memory>

namespace vessel::cli {
namespace {

constexpr const char* kFooter =
    "exit status of run and exec: the command's; 128+N if signal N ended it; 124 on\n"
    "timeout; 125 when vessel itself failed.";

template <typename T>
std::optional<T> ParseNumber(const std::string& text) {
  T value{};
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

// Options that take a value CLI11 cannot check for us in our words: `apply` throws
// CLI::ValidationError with the message to show.
CLI::Option* AddChecked(CLI::App* app, const std::string& flag,
                        std::function<void(const std::string&)> apply, const std::string& help) {
  return app->add_option_function<std::string>(flag, std::move(apply), help);
}

template <typename T>
CLI::Option* AddNumber(CLI::App* app, const std::string& flag, T& target, const std::string& wants,
                       const std::string& help) {
  return AddChecked(
      app, flag,
      [&target, flag, wants](const std::string& value) {
        auto n = ParseNumber<T>(value);
        if (!n) throw CLI::ValidationError(flag + " wants " + wants + ", not " + value);
        target = *n;
      },
      help);
}

CLI::Option* AddEngine(CLI::App* app, EngineKind& target, const std::string& help) {
  return AddChecked(
      app, "--engine",
      [&target](const std::string& value) {
        if (value == "auto") {
          target = EngineKind::kAuto;
        } else if (value == "qemu") {
          target = EngineKind::kQemu;
        } else if (value == "kvm") {
          target = EngineKind::kKvm;
        } else {
          throw CLI::ValidationError("--engine wants qemu, kvm or auto, not " + value);
        }
      },
      help);
}

// Appends the comma-separated allowlist rules of `value` to `rules`; `what` names the
// option or argument in the error.
void AppendRules(const std::string& what, const std::string& value,
                 std::vector<std::string>& rules) {
  size_t start = 0;
  for (;;) {
    size_t comma = value.find(',', start);
    std::string rule = value.substr(start, comma - start);
    if (rule.empty()) throw CLI::ValidationError(what + " has an empty rule in '" + value + "'");
    rules.push_back(std::move(rule));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
}

// The RULE... arguments of `net allow` and `net deny`.
void AddRuleArguments(CLI::App* app, const std::string& what, std::vector<std::string>& rules) {
  app->add_option_function<std::vector<std::string>>(
         "RULE",
         [&rules, what](const std::vector<std::string>& values) {
           for (const std::string& value : values) AppendRules(what, value, rules);
         },
         "HOST, *.DOMAIN or an IP address, each with an optional :PORT, as --allow-net takes "
         "them; comma-separated or several")
      ->required()
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
      ->expected(1, -1);
}

void AddMachineOptions(CLI::App* app, SandboxConfig& config) {
  AddNumber(app, "--memory", config.memory_mib, "a number of MiB", "guest memory (default 256)");
  AddNumber(app, "--vcpus", config.vcpus, "a number", "guest CPUs (default 1)");
  app->add_option("--kernel", config.kernel, "guest kernel (default: the built one)");
  app->add_option("--initramfs", config.initramfs, "guest initramfs (default: the built one)");
  app->add_option("--image", config.image,
                  "root image by name or digest (vessel image ls; default: none, the minimal "
                  "busybox guest)");
  AddNumber(app, "--overlay", config.overlay_mib, "a number of MiB",
            "room for what the guest writes over its image, in guest RAM (default: half "
            "of --memory)");
  AddEngine(app, config.engine,
            "qemu, kvm (vessel-vmm, needs /dev/kvm) or auto (default: kvm where /dev/kvm is "
            "usable, else qemu)");
  app->add_option_function<std::vector<std::string>>(
         "--allow-net",
         [&config](const std::vector<std::string>& values) {
           for (const std::string& value : values) {
             AppendRules("--allow-net", value, config.network.allow);
           }
         },
         "let the guest reach these hosts through its HTTP(S) proxy: HOST, *.DOMAIN or an IP "
         "address, each with an optional :PORT (default 80 and 443); comma-separated, "
         "repeatable (default: no network)")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
      ->allow_extra_args(false);
}

// The options `run` and `exec` share.
void AddExecOptions(CLI::App* app, ExecOptions& options) {
  AddChecked(
      app, "--timeout",
      [&options](const std::string& value) {
        auto n = ParseNumber<double>(value);
        if (!n || *n <= 0 || *n > 4e6) {
          throw CLI::ValidationError("--timeout wants a positive number of seconds, not " + value);
        }
        options.timeout = std::chrono::milliseconds(static_cast<int64_t>(*n * 1000));
      },
      "kill the command after this many SECONDS (default: none)");
  app->add_option("--env", options.env, "set an environment variable KEY=VALUE (repeatable)")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
      ->allow_extra_args(false);
  app->add_option("--cwd", options.cwd, "working directory in the guest (default /)");
  AddNumber(app, "--output-cap", options.output_cap, "a number of bytes",
            "keep at most this many BYTES of each output stream (default 16 MiB)");
}

// The command that follows a command's options: everything after the first "--", or
// from the first argument that is neither an option nor its value. CLI11 leaves the
// latter in remaining() (prefix_command()); what it left that looks like an option is one
// it does not know.
std::vector<std::string> TrailingCommand(const CLI::App& app,
                                         const std::optional<std::vector<std::string>>& after) {
  std::vector<std::string> command = app.remaining();
  if (!command.empty() && command.front().starts_with("-")) {
    throw CLI::ValidationError("unknown option " + command.front());
  }
  if (after) {
    if (!command.empty()) command.push_back("--");
    command.insert(command.end(), after->begin(), after->end());
  }
  return command;
}

}  // namespace

std::variant<Invocation, UsageError> ParseArgs(const std::vector<std::string>& args_in) {
  std::vector<std::string> args = args_in;
  if (!args.empty() && args.front() == "help") args.front() = "--help";
  // run and exec end with a command of their own, whose arguments are not ours: CLI11
  // sees only what comes before the first "--".
  std::optional<std::vector<std::string>> after_separator;
  if (!args.empty() && (args.front() == "run" || args.front() == "exec")) {
    auto separator = std::find(args.begin(), args.end(), "--");
    if (separator != args.end()) {
      after_separator.emplace(separator + 1, args.end());
      args.erase(separator, args.end());
    }
  }

  CLI::App app("vessel: microVM sandboxes", "vessel");
  app.get_formatter()->label("Usage", "usage");
  app.footer(kFooter);
  app.require_subcommand(1);
  // An option given twice takes its last value, so a caller's default can be overridden.
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);

  RunArgs run_args;
  auto* run = app.add_subcommand(
      "run", "[OPTIONS] -- COMMAND [ARG...]: boot a microVM, run COMMAND in it, destroy it");
  run->prefix_command();
  AddMachineOptions(run, run_args.config);
  AddExecOptions(run, run_args.options);

  CreateArgs create_args;
  auto* create = app.add_subcommand("create", "boot a sandbox that keeps running; prints its id");
  AddMachineOptions(create, create_args.config);
  create->add_option("--name", create_args.config.name, "a name to use instead of the id");

  ExecArgs exec_args;
  // Streamed as it comes, so nothing needs capping; stdin is a pipe fed from ours.
  exec_args.options.output_cap = std::numeric_limits<uint64_t>::max();
  bool no_stdin = false;
  auto* exec = app.add_subcommand(
      "exec",
      "[OPTIONS] ID -- COMMAND [ARG...]: run COMMAND in sandbox ID (an id or a name), "
      "streaming its output; our stdin goes to its stdin, ^C to it as SIGINT");
  exec->prefix_command();
  exec->add_option("ID", exec_args.target, "the sandbox")->required();
  AddExecOptions(exec, exec_args.options);
  exec->add_flag("--no-stdin", no_stdin, "give the command /dev/null as stdin");
  bool tty = false;
  bool interactive = false;
  exec->add_flag("-t,--tty", tty,
                 "run the command on a terminal of our terminal's size (TERM from ours); "
                 "stdin only with -i");
  exec->add_flag("-i,--interactive", interactive,
                 "forward our stdin (the default without -t); with -t, our terminal is put in "
                 "raw mode so that keys such as ^C reach the command");

  ExecArgs shell_args;
  shell_args.options.output_cap = std::numeric_limits<uint64_t>::max();
  auto* shell =
      app.add_subcommand("shell",
                         "ID: an interactive login shell in sandbox ID on a terminal, like ssh "
                         "(bash where the guest has it, else sh)");
  shell->add_option("ID", shell_args.target, "the sandbox")->required();
  shell
      ->add_option("--env", shell_args.options.env,
                   "set an environment variable KEY=VALUE (repeatable)")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
      ->allow_extra_args(false);

  CopyArgs copy_args;
  auto* cp = app.add_subcommand(
      "cp", "copy one file into or out of a sandbox: exactly one of SRC and DST is ID:/path");
  cp->add_option("SRC", copy_args.from)->required();
  cp->add_option("DST", copy_args.to)->required();

  ListArgs list_args;
  auto* ls = app.add_subcommand(
      "ls", "list sandboxes: id, name, state (running, failed, dead), engine, memory, age");
  ls->add_flag("--json", list_args.json, "as JSON, for scripts");

  RemoveArgs remove_args;
  auto* rm = app.add_subcommand("rm", "stop sandboxes and remove what is left of them");
  rm->add_option("ID", remove_args.targets, "sandbox ids or names")
      ->required()
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
      ->expected(1, -1);

  NetArgs net_args;
  auto* net = app.add_subcommand(
      "net",
      "print sandbox ID's egress: the hosts its guest may reach through its HTTP(S) proxy, "
      "its limits, its counters and its recent refusals (docs/egress.md)");
  // Not required of CLI11, which would take `allow` for an ID.
  net->add_option("ID", net_args.target, "the sandbox");
  net->add_flag("--json", net_args.json, "as JSON, for scripts");
  auto* net_allow = net->add_subcommand(
      "allow", "let sandbox ID's guest reach these hosts too, from now on; prints as net ID");
  net_allow->add_option("ID", net_args.target, "the sandbox")->required();
  AddRuleArguments(net_allow, "net allow", net_args.allow);
  net_allow->add_flag("--json", net_args.json, "as JSON, for scripts");
  auto* net_deny = net->add_subcommand(
      "deny",
      "take these rules out of sandbox ID's allowlist (connections open now go on); prints as "
      "net ID");
  net_deny->add_option("ID", net_args.target, "the sandbox")->required();
  AddRuleArguments(net_deny, "net deny", net_args.deny);
  net_deny->add_flag("--json", net_args.json, "as JSON, for scripts");

  SnapshotArgs snapshot_args;
  auto* snapshot = app.add_subcommand(
      "snapshot",
      "save sandbox ID (memory, processes, files) to the new or empty directory DIR; ID "
      "goes on running. Prints DIR");
  // Not required of CLI11, which would take `verify` for an ID.
  snapshot->add_option("ID", snapshot_args.target);
  snapshot->add_option("DIR", snapshot_args.dir);
  VerifyArgs verify_args;
  auto* verify = snapshot->add_subcommand(
      "verify",
      "check every checksum of the snapshot in DIR, memory included; prints \"ok\" and what "
      "it holds. Exit status 0 when it is intact, 1 when it is damaged or no snapshot, 125 "
      "when it cannot check");
  verify->add_option("DIR", verify_args.dir)->required();
  SnapshotImportArgs snapshot_import_args;
  auto* snapshot_import = snapshot->add_subcommand(
      "import",
      "make the snapshot in DIR, taken on another host or by an older Vessel, one this host "
      "restores: checks every checksum, memory included, then signs it with this host's key. "
      "Only for a snapshot you trust");
  snapshot_import->add_option("DIR", snapshot_import_args.dir)->required();

  RestoreArgs restore_args;
  auto* restore = app.add_subcommand(
      "restore",
      "start a sandbox that keeps running from the snapshot in DIR, as create does; prints "
      "its id");
  restore->add_option("DIR", restore_args.dir)->required();
  restore->add_option("--name", restore_args.name, "a name to use instead of the id");
  AddEngine(restore, restore_args.engine,
            "must be the engine that saved it (default auto: that one)");
  auto* restore_allow_net =
      restore
          ->add_option_function<std::vector<std::string>>(
              "--allow-net",
              [&restore_args](const std::vector<std::string>& values) {
                auto& rules = restore_args.allow_net.emplace();
                for (const std::string& value : values) AppendRules("--allow-net", value, rules);
              },
              "replace the allowlist the snapshot carries with these hosts, as create's "
              "--allow-net takes them (default: the snapshot's)")
          ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
          ->allow_extra_args(false);
  restore
      ->add_flag_callback(
          "--no-net", [&restore_args] { restore_args.allow_net.emplace(); },
          "restore with no egress, whatever the snapshot allowed")
      ->excludes(restore_allow_net);

  ForkArgs fork_args;
  auto* fork = app.add_subcommand(
      "fork",
      "copy sandbox ID as it is now into new sandboxes, independent of it and of each "
      "other; prints their ids, one per line");
  fork->add_option("ID", fork_args.target)->required();
  fork->add_option("-n", fork_args.count, "how many (1 to 64, default 1)");

  auto* doctor = app.add_subcommand("doctor", "check what this host can run");

  auto* image = app.add_subcommand("image", "guest root images: build, import, ls, rm");
  image->require_subcommand(1);
  ImageBuildArgs build_args;
  auto* build = image->add_subcommand(
      "build",
      "build image NAME from Debian packages (cached: the same recipe builds once). Without "
      "--packages, NAME is a built-in recipe: python (python3, pip, venv, numpy, requests, "
      "git, curl, ca-certificates) or debian (the essential set)");
  build->add_option("NAME", build_args.name)->required();
  build->add_option("--packages", build_args.packages,
                    "Debian packages to install, separated by spaces or commas");
  build->add_option("--suite", build_args.suite, "Debian suite (default bookworm)");
  build->add_option("--mirror", build_args.mirror,
                    "Debian mirror (default http://deb.debian.org/debian)");
  ImageImportArgs import_args;
  auto* import = image->add_subcommand(
      "import",
      "make image NAME from a root file system in a tar archive (gzip, xz, zstd...): "
      "absolute paths are made relative, device nodes dropped, setuid bits cleared; "
      "'..' paths are refused");
  import->add_option("NAME", import_args.name)->required();
  import->add_option("TARBALL", import_args.tarball)->required();
  ImageListArgs image_list_args;
  auto* image_ls = image->add_subcommand("ls", "list images: name, digest, size, created, packages");
  image_ls->add_flag("--json", image_list_args.json, "as JSON, for scripts");
  ImageRemoveArgs image_rm_args;
  auto* image_rm = image->add_subcommand(
      "rm", "remove images; refused while a running sandbox or a snapshot uses one");
  image_rm->add_option("NAME", image_rm_args.names)
      ->required()
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
      ->expected(1, -1);

  ServeArgs serve_args;
  auto* serve = app.add_subcommand(
      "serve", "serve E2B's sandbox API over HTTP, for the e2b SDKs (docs/server.md)");
  serve->add_option("--listen", serve_args.listen, "HOST:PORT to listen on")->capture_default_str();
  serve->add_option("--api-key-file", serve_args.api_key_file,
                    "the API key clients must send (made when missing; default: "
                    "~/.config/vessel/api-key)");
  serve->add_option("--pool", serve_args.pools,
                    "TEMPLATE=N: keep N booted sandboxes of TEMPLATE, so that creating one takes "
                    "a warm one (repeatable)")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);

  auto* mcp = app.add_subcommand(
      "mcp", "an MCP server on stdin and stdout, for agents that spawn one (docs/mcp.md)");

  SuperviseArgs supervise_args;
  // Hidden: started by create, restore and fork.
  auto* supervise = app.add_subcommand("__supervise")->group("");
  supervise->add_option("CONFIG", supervise_args.config)->required();

  std::vector<std::string> reversed(args.rbegin(), args.rend());
  try {
    app.parse(reversed);
    if (run->parsed()) {
      run_args.command = TrailingCommand(*run, after_separator);
      if (run_args.command.empty()) throw CLI::ValidationError("run needs a command");
      return run_args;
    }
    if (exec->parsed()) {
      exec_args.command = TrailingCommand(*exec, after_separator);
      if (exec_args.command.empty()) throw CLI::ValidationError("exec needs a command");
      if (interactive && no_stdin) throw CLI::ValidationError("-i and --no-stdin contradict");
      if (tty) exec_args.options.terminal = TerminalSize{};
      if (tty ? interactive : !no_stdin) exec_args.options.stdin_data = std::string();
      return exec_args;
    }
    if (shell->parsed()) {
      shell_args.options.terminal = TerminalSize{};
      shell_args.options.stdin_data = std::string();
      // A login shell in the home directory, as ssh gives one.
      shell_args.command = {"/bin/sh", "-c",
                            "cd \"${HOME:-/}\" 2>/dev/null; "
                            "if command -v bash >/dev/null; then exec bash -l; fi; exec sh -l"};
      return shell_args;
    }
    if (create->parsed()) return create_args;
    if (cp->parsed()) return copy_args;
    if (ls->parsed()) return list_args;
    if (rm->parsed()) return remove_args;
    if (net_allow->parsed() || net_deny->parsed()) return net_args;
    if (net->parsed()) {
      if (net_args.target.empty()) throw CLI::ValidationError("net wants a sandbox id or name");
      return net_args;
    }
    if (verify->parsed()) return verify_args;
    if (snapshot_import->parsed()) return snapshot_import_args;
    if (snapshot->parsed()) {
      if (snapshot_args.target.empty() || snapshot_args.dir.empty()) {
        throw CLI::ValidationError("snapshot wants a sandbox id or name and a DIR");
      }
      return snapshot_args;
    }
    if (restore->parsed()) return restore_args;
    if (fork->parsed()) return fork_args;
    if (doctor->parsed()) return DoctorArgs{};
    if (build->parsed()) return build_args;
    if (import->parsed()) return import_args;
    if (image_ls->parsed()) return image_list_args;
    if (image_rm->parsed()) return image_rm_args;
    if (serve->parsed()) return serve_args;
    if (mcp->parsed()) return McpArgs{};
    if (supervise->parsed()) return supervise_args;
    throw CLI::CallForHelp();
  } catch (const CLI::CallForHelp&) {
    // help() describes the command that was given, if any.
    return HelpArgs{app.help()};
  } catch (const CLI::ParseError& e) {
    if (app.get_subcommands().empty() && !args.empty() && !args.front().starts_with("-")) {
      return UsageError{"unknown command " + args.front(), app.help()};
    }
    return UsageError{e.what(), app.help()};
  }
}

}  // namespace vessel::cli
