#include "auth/passphrase.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "crypto/crypto.h"
#include "crypto/private_file.h"

namespace testudo::auth {
namespace {

constexpr std::size_t kMaxPassphraseBytes = 1024;
constexpr std::size_t kMaxSecretReadBytes = 64 * 1024;  // files and commands (a token may be long)

// The first line of `text` (a trailing "\n" or "\r\n" is not part of a passphrase).
std::string first_line(std::string text) {
  auto end = text.find('\n');
  if (end != std::string::npos) {
    std::string line = text.substr(0, end);
    crypto::wipe(text);
    text = std::move(line);
  }
  if (!text.empty() && text.back() == '\r') text.pop_back();
  return text;
}

Status check_usable(std::string& passphrase, std::string_view what, std::string_view from, std::size_t max_bytes) {
  if (passphrase.empty()) return invalid_argument("empty passphrase for " + std::string(what) + " from " + std::string(from));
  if (passphrase.size() > max_bytes) {
    crypto::wipe(passphrase);
    return invalid_argument("passphrase for " + std::string(what) + " from " + std::string(from) + " is longer than " +
                            std::to_string(max_bytes) + " bytes");
  }
  return ok_status();
}

StatusOr<std::string> from_terminal(std::string_view what, std::string_view prompt_word) {
  int tty = ::open("/dev/tty", O_RDWR | O_CLOEXEC);
  if (tty < 0) {
    return failed_precondition("no terminal to ask for the passphrase of " + std::string(what) +
                               "; give its source as file:PATH, env:NAME or command:CMD (--key-passphrase-from or " +
                               kPassphraseSourceEnv + " for a key, --password-from for a password)");
  }
  termios saved{};
  bool restore = ::tcgetattr(tty, &saved) == 0;
  if (restore) {
    termios quiet = saved;
    quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO);
    quiet.c_lflag |= ECHONL;
    ::tcsetattr(tty, TCSAFLUSH, &quiet);
  }
  std::string prompt = std::string(prompt_word) + " for " + std::string(what) + ": ";
  [[maybe_unused]] auto w = ::write(tty, prompt.data(), prompt.size());
  std::string line;
  char c;
  while (line.size() <= kMaxPassphraseBytes) {
    ssize_t n = ::read(tty, &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0 || c == '\n') break;
    line.push_back(c);
  }
  if (restore) ::tcsetattr(tty, TCSAFLUSH, &saved);
  ::close(tty);
  crypto::wipe(std::as_writable_bytes(std::span(&c, 1)));
  return first_line(std::move(line));
}

StatusOr<std::string> from_command(const std::string& command, std::string_view what) {
  int out[2];
  if (::pipe2(out, O_CLOEXEC) != 0) return internal_error(std::string("pipe: ") + std::strerror(errno));
  pid_t pid = ::fork();
  if (pid < 0) {
    ::close(out[0]);
    ::close(out[1]);
    return internal_error(std::string("fork: ") + std::strerror(errno));
  }
  if (pid == 0) {
    ::dup2(out[1], STDOUT_FILENO);
    ::execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::close(out[1]);
  std::string text;
  char buf[256];
  for (;;) {
    ssize_t n = ::read(out[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    if (text.size() < kMaxSecretReadBytes) text.append(buf, static_cast<std::size_t>(n));
  }
  crypto::wipe(std::as_writable_bytes(std::span(buf)));
  ::close(out[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    crypto::wipe(text);
    // The command line is the user's own configuration, not a secret; its output is.
    return failed_precondition("passphrase command for " + std::string(what) + " failed (" +
                               (WIFEXITED(status) ? "exit status " + std::to_string(WEXITSTATUS(status))
                                                  : std::string("killed by a signal")) +
                               "): " + command);
  }
  return first_line(std::move(text));
}

}  // namespace

std::string PassphraseSource::spec() const {
  switch (kind) {
    case Kind::kPrompt: return "prompt";
    case Kind::kFile: return "file:" + argument;
    case Kind::kEnv: return "env:" + argument;
    case Kind::kCommand: return "command:" + argument;
    case Kind::kCallback: return "a callable";
  }
  return "prompt";
}

StatusOr<PassphraseSource> parse_passphrase_source(std::string_view spec) {
  auto with = [&](PassphraseSource::Kind kind, std::string_view prefix) -> StatusOr<PassphraseSource> {
    std::string arg(spec.substr(prefix.size()));
    if (arg.empty()) return invalid_argument("passphrase source '" + std::string(spec) + "' needs something after '" + std::string(prefix) + "'");
    return PassphraseSource{kind, std::move(arg)};
  };
  if (spec == "prompt") return PassphraseSource{PassphraseSource::Kind::kPrompt, ""};
  if (spec.starts_with("file:")) return with(PassphraseSource::Kind::kFile, "file:");
  if (spec.starts_with("env:")) return with(PassphraseSource::Kind::kEnv, "env:");
  if (spec.starts_with("command:")) return with(PassphraseSource::Kind::kCommand, "command:");
  // Do not echo the spec back: a user who typed the passphrase itself here must not see it in logs.
  return invalid_argument("a passphrase source is prompt, file:PATH, env:NAME or command:CMD (the passphrase itself is "
                          "never given on the command line)");
}

StatusOr<PassphraseSource> default_passphrase_source() {
  const char* spec = std::getenv(kPassphraseSourceEnv);
  if (spec == nullptr || *spec == '\0') return PassphraseSource{};
  auto parsed = parse_passphrase_source(spec);
  if (!parsed.ok()) return invalid_argument(std::string(kPassphraseSourceEnv) + ": " + parsed.status().message());
  return parsed;
}

StatusOr<std::string> read_passphrase(const PassphraseSource& source, std::string_view what, bool confirm,
                                      std::size_t max_bytes) {
  std::string passphrase;
  switch (source.kind) {
    case PassphraseSource::Kind::kPrompt: {
      TESTUDO_ASSIGN_OR_RETURN(passphrase, from_terminal(what, "Passphrase"));
      if (confirm) {
        TESTUDO_ASSIGN_OR_RETURN(std::string again, from_terminal(what, "Same passphrase again"));
        bool same = again == passphrase;
        crypto::wipe(again);
        if (!same) {
          crypto::wipe(passphrase);
          return invalid_argument("the two passphrases differ");
        }
      }
      break;
    }
    case PassphraseSource::Kind::kFile: {
      TESTUDO_ASSIGN_OR_RETURN(std::string text, crypto::read_private_file(source.argument, "passphrase file", kMaxSecretReadBytes));
      passphrase = first_line(std::move(text));
      break;
    }
    case PassphraseSource::Kind::kEnv: {
      const char* value = std::getenv(source.argument.c_str());
      if (value == nullptr) {
        return not_found("environment variable " + source.argument + " (passphrase for " + std::string(what) + ") is not set");
      }
      passphrase = value;
      break;
    }
    case PassphraseSource::Kind::kCommand: {
      TESTUDO_ASSIGN_OR_RETURN(passphrase, from_command(source.argument, what));
      break;
    }
    case PassphraseSource::Kind::kCallback: {
      if (!source.callback) return invalid_argument("no passphrase callable for " + std::string(what));
      TESTUDO_ASSIGN_OR_RETURN(passphrase, source.callback());
      break;
    }
  }
  TESTUDO_RETURN_IF_ERROR(check_usable(passphrase, what, source.spec(), max_bytes));
  return passphrase;
}

}  // namespace testudo::auth
