#include "cli/users.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <optional>

#include "auth/passphrase.h"
#include "auth/user_file.h"
#include "base/profile.h"
#include "cli/common_options.h"
#include "crypto/crypto.h"
#include "crypto/private_file.h"

namespace testudo::cli {
namespace {

int fail(const Status& st) { return report_failure("testudo users", st); }

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& s : items) out += (out.empty() ? "" : ",") + s;
  return out;
}

// Two `users` commands at once would each write the file they read, and one change would be
// lost: each holds an exclusive lock on the file's directory while it reads and writes. (The
// controller only reads, and the writes are atomic renames, so it needs no lock.)
class DirectoryLock {
 public:
  static StatusOr<std::unique_ptr<DirectoryLock>> take(const std::string& dir) {
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return permission_denied("cannot open directory " + dir + ": " + std::strerror(errno));
    if (::flock(fd, LOCK_EX) != 0) {
      const int err = errno;
      ::close(fd);
      return permission_denied("cannot lock directory " + dir + ": " + std::strerror(err));
    }
    return std::unique_ptr<DirectoryLock>(new DirectoryLock(fd));
  }
  ~DirectoryLock() { ::close(fd_); }

 private:
  explicit DirectoryLock(int fd) : fd_(fd) {}
  int fd_;
};

}  // namespace

struct UsersCommand::Impl {
  CLI::App* users = nullptr;
  CLI::App* add = nullptr;
  CLI::App* passwd = nullptr;
  CLI::App* modify = nullptr;
  CLI::App* remove = nullptr;
  CLI::App* list = nullptr;
  std::string file;
  std::string name;
  std::vector<std::string> groups;
  std::optional<std::string> groups_text;  // --groups a,b
  std::string password_from = "prompt";
  std::uint32_t iterations = auth::kDefaultScramIterations;
  bool disable = false;
  bool enable = false;

  std::string path(const std::string& profile) const {
    return file.empty() ? profile_paths(profile).security_dir + "/users.json" : file;
  }

  StatusOr<auth::ScramVerifier> new_verifier(const std::string& where) const {
    TESTUDO_ASSIGN_OR_RETURN(auto source, auth::parse_passphrase_source(password_from));
    TESTUDO_ASSIGN_OR_RETURN(std::string password,
                             auth::read_passphrase(source, "the password of " + name + " (user file " + where + ")",
                                                   /*confirm=*/true));
    auto verifier = auth::make_scram_verifier(password, iterations);
    crypto::wipe(password);
    return verifier;
  }

  int run(const std::string& profile) {
    const std::string where = path(profile);
    if (*list) return run_list(where);
    if (groups_text) {
      // "a,b" -> {a, b}; --groups '' clears them.
      std::string_view rest = *groups_text;
      while (!rest.empty()) {
        const std::size_t comma = rest.find(',');
        if (comma != 0) groups.emplace_back(rest.substr(0, comma));
        rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
      }
    }
    if (Status st = auth::check_user_name(name); !st.ok()) return fail(st);
    for (const auto& g : groups) {
      if (Status st = auth::check_group_name(g); !st.ok()) return fail(st);
    }
    const std::string dir = std::filesystem::path(where).parent_path().string();
    // The profile's security/ directory is made owner-only like the rest of it; a directory
    // given with --file must exist already.
    if (file.empty()) {
      if (Status st = crypto::ensure_private_dir(dir); !st.ok()) return fail(st);
    }
    auto lock = DirectoryLock::take(dir.empty() ? "." : dir);
    if (!lock.ok()) return fail(lock.status());

    auto loaded = auth::UserFile::load(where);
    const bool created = !loaded.ok() && loaded.status().code() == StatusCode::kNotFound && *add;
    if (created) loaded = auth::UserFile::create();
    if (!loaded.ok()) return fail(loaded.status());
    auth::UserFile& users_file = *loaded;
    const auth::UserEntry* existing = users_file.find(name);

    std::string done;
    if (*add) {
      if (existing != nullptr) {
        return fail(already_exists("user " + name + " is in " + where + " already; `testudo users passwd " + name +
                                   "` changes the password"));
      }
      auto verifier = new_verifier(where);
      if (!verifier.ok()) return fail(verifier.status());
      if (Status st = users_file.set(name, auth::UserEntry{std::move(verifier).value(), groups, false}); !st.ok()) {
        return fail(st);
      }
      done = "added user " + name + (groups.empty() ? "" : " (groups " + join(groups) + ")");
    } else {
      if (existing == nullptr) return fail(not_found("no user " + name + " in " + where));
      auth::UserEntry entry = *existing;
      if (*passwd) {
        auto verifier = new_verifier(where);
        if (!verifier.ok()) return fail(verifier.status());
        entry.verifier = std::move(verifier).value();
        done = "changed the password of " + name;
      } else if (*modify) {
        if (!groups_text && !disable && !enable) {
          return fail(invalid_argument("nothing to change: give --groups, --disable or --enable"));
        }
        if (disable && enable) return fail(invalid_argument("--disable and --enable together"));
        if (groups_text) entry.groups = groups;
        if (disable) entry.disabled = true;
        if (enable) entry.disabled = false;
        done = "changed user " + name + ": groups " + (entry.groups.empty() ? "(none)" : join(entry.groups)) +
               (entry.disabled ? ", disabled" : ", enabled");
      }
      if (*remove) {
        users_file.remove(name);
        done = "removed user " + name + " (a session already logged in goes on until it disconnects)";
      } else if (Status st = users_file.set(name, std::move(entry)); !st.ok()) {
        return fail(st);
      }
    }
    if (Status st = users_file.save(where); !st.ok()) return fail(st);
    std::cout << done << " in " << where << "\n";
    if (created && file.empty()) {
      // A controller looks for the profile's user file when it starts (controller --users).
      std::cout << "created " << where
                << "; a controller of this profile that is running now accepts password logins after a restart\n";
    }
    return kExitOk;
  }

  int run_list(const std::string& where) {
    auto loaded = auth::UserFile::load(where);
    if (!loaded.ok()) return fail(loaded.status());
    if (loaded->users().empty()) {
      std::cout << "(no users in " << where << ")\n";
      return kExitOk;
    }
    std::printf("%-24s %-9s %s\n", "USER", "STATE", "GROUPS");
    for (const auto& [user, entry] : loaded->users()) {
      std::printf("%-24s %-9s %s\n", user.c_str(), entry.disabled ? "disabled" : "enabled",
                  entry.groups.empty() ? "-" : join(entry.groups).c_str());
    }
    return kExitOk;
  }
};

UsersCommand::UsersCommand(CLI::App& app) : impl_(std::make_unique<Impl>()) {
  Impl& i = *impl_;
  i.users = app.add_subcommand("users", "Password logins: manage the controller's user file (security/users.json)");
  i.users->require_subcommand(1);
  i.users->fallthrough();
  i.users->footer("The file holds SCRAM-SHA-256 verifiers, never passwords (docs/security.md, \"Passwords\"). "
                  "A running controller re-reads it at the next login.");
  i.users->add_option("--file", i.file, "The user file (default: the profile's security/users.json)");

  auto password_options = [&](CLI::App* cmd) {
    cmd->add_option("--password-from", i.password_from,
                    "Where the new password comes from: prompt (asked twice), file:PATH, env:NAME or command:CMD")
        ->capture_default_str();
    cmd->add_option("--iterations", i.iterations,
                    "PBKDF2 iterations of the verifier (each login costs the client this)")
        ->capture_default_str()
        ->check(CLI::Range(auth::kMinScramIterations, auth::kMaxScramIterations));
  };
  auto name_argument = [&](CLI::App* cmd) { cmd->add_option("name", i.name, "User name")->required(); };
  auto groups_option = [&](CLI::App* cmd) {
    cmd->add_option("--groups", i.groups_text, "Groups, comma-separated (policy \"login-group:<name>\")");
  };

  i.add = i.users->add_subcommand("add", "Add a user with a password (creates the file if needed)");
  name_argument(i.add);
  groups_option(i.add);
  password_options(i.add);
  i.passwd = i.users->add_subcommand("passwd", "Set a user's password");
  name_argument(i.passwd);
  password_options(i.passwd);
  i.modify = i.users->add_subcommand("modify", "Change a user's groups, or disable or enable the account");
  name_argument(i.modify);
  groups_option(i.modify);
  i.modify->add_flag("--disable", i.disable, "Refuse the user's logins (the password is kept)");
  i.modify->add_flag("--enable", i.enable, "Accept the user's logins again");
  i.remove = i.users->add_subcommand("remove", "Remove a user");
  name_argument(i.remove);
  i.list = i.users->add_subcommand("list", "List users, their groups and state (never verifiers)");
}

UsersCommand::~UsersCommand() = default;

bool UsersCommand::chosen() const { return impl_->users->parsed(); }

int UsersCommand::run(const std::string& profile) { return impl_->run(profile); }

}  // namespace testudo::cli
