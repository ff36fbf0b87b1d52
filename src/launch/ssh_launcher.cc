#include "launch/ssh_launcher.h"

#include "crypto/crypto.h"
#include "launch/run_command.h"

#include <charconv>

namespace testudo::launch {

StatusOr<std::vector<SshHost>> parse_ssh_hosts(std::string_view text) {
  std::vector<SshHost> hosts;
  while (!text.empty()) {
    const auto comma = text.find(',');
    const std::string_view entry = text.substr(0, comma);
    text = comma == std::string_view::npos ? std::string_view() : text.substr(comma + 1);
    SshHost host;
    const auto colon = entry.rfind(':');
    host.name = std::string(entry.substr(0, colon));
    if (colon != std::string_view::npos) {
      const std::string_view count = entry.substr(colon + 1);
      auto [end, ec] = std::from_chars(count.data(), count.data() + count.size(), host.engines);
      if (ec != std::errc() || end != count.data() + count.size() || host.engines < 1 || host.engines > 4096) {
        return invalid_argument("--hosts: '" + std::string(entry) + "' is not HOST or HOST:N with N from 1 to 4096");
      }
    }
    if (host.name.empty() || host.name.find_first_of(" \t'\"\\;&|$`") != std::string::npos ||
        host.name.front() == '-') {
      return invalid_argument("--hosts: '" + std::string(entry) + "' is not a host name");
    }
    hosts.push_back(std::move(host));
  }
  if (hosts.empty()) return invalid_argument("--hosts: no host given (e.g. --hosts node1:4,node2:4)");
  return hosts;
}

std::string shell_quote(std::string_view s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

std::vector<std::string> ssh_argv(const SshSettings& settings, const std::string& host, bool tty,
                                  const std::string& remote_command) {
  std::vector<std::string> argv{settings.ssh};
  argv.insert(argv.end(), settings.ssh_args.begin(), settings.ssh_args.end());
  argv.insert(argv.end(), {"-o", "BatchMode=yes"});
  if (tty) argv.push_back("-tt");
  argv.insert(argv.end(), {"--", host, remote_command});
  return argv;
}

Status ssh_failure(const std::string& what, const std::string& host, int exit_code, const std::string& err,
                   std::chrono::milliseconds timeout) {
  const std::string why = last_line(err);
  return unavailable("cannot " + what + " " + host + " over SSH: " +
                     (exit_code < 0   ? "no answer within " + std::to_string(timeout.count() / 1000) + " s"
                      : why.empty()   ? "ssh exit status " + std::to_string(exit_code)
                                      : why));
}

StatusOr<std::string> write_files_script(const std::string& remote_dir,
                                         const std::vector<std::pair<std::string, std::string>>& files) {
  TESTUDO_ASSIGN_OR_RETURN(auto nonce, crypto::random_secret());
  const std::string delimiter = "TESTUDO_END_" + crypto::to_hex(std::span(nonce).first(12));
  const std::string dir = shell_quote(remote_dir);
  std::string script = "set -e\numask 077\nmkdir -p " + dir + "\nchmod 700 " + dir + "\n";
  for (const auto& [name, contents] : files) {
    script += "cat > " + dir + "/" + shell_quote(name) + " <<'" + delimiter + "'\n" + contents;
    if (!contents.empty() && contents.back() != '\n') script += "\n";
    script += delimiter + "\n";
  }
  return script;
}

Status copy_to_host(const SshSettings& settings, const std::string& host,
                    const std::vector<std::pair<std::string, std::string>>& files, std::chrono::milliseconds timeout) {
  // One SSH connection for every file: each costs a key exchange, ~1 s on a busy machine.
  TESTUDO_ASSIGN_OR_RETURN(std::string script, write_files_script(settings.remote_dir, files));
  TESTUDO_ASSIGN_OR_RETURN(CommandResult done, run_command(ssh_argv(settings, host, false, "sh -s"), script, timeout));
  crypto::wipe(script);
  if (done.exit_code != 0) return ssh_failure("copy the engine's files to", host, done.exit_code, done.err, timeout);
  return ok_status();
}

std::vector<std::string> ssh_engines_command(const SshSettings& settings, const std::string& host, int engines,
                                             const std::vector<std::string>& engine_args) {
  std::string engine = shell_quote(settings.remote_testudo) + " engine --file controller-engine.json";
  for (const auto& a : engine_args) engine += " " + shell_quote(a);
  // `command -v` first: a host without testudo says so in one line instead of n times.
  const std::string remote = "cd " + shell_quote(settings.remote_dir) + " && command -v " +
                             shell_quote(settings.remote_testudo) + " >/dev/null || { echo " +
                             shell_quote("testudo: " + settings.remote_testudo + " not found on " + host) +
                             " >&2; exit 127; }; i=0; while [ $i -lt " + std::to_string(engines) + " ]; do " + engine +
                             " & i=$((i+1)); done; wait";
  return ssh_argv(settings, host, true, remote);
}

}  // namespace testudo::launch
