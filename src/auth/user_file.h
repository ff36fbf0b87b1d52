// The controller's user file for password logins (docs/security.md, "Passwords"): for each
// user a SCRAM-SHA-256 verifier (salt, iteration count, StoredKey, ServerKey; RFC 5802
// section 3), the user's groups and whether the account is disabled. Never a password: a
// stolen file gives an attacker one offline PBKDF2 guess per `iterations` hashes and no way to
// log in without guessing (StoredKey does not make a ClientProof).
//
// Format (JSON, version 1, strict: unknown keys, duplicate keys and a newer version refused):
//   {"version": 1,
//    "decoy_key": "<base64, 32 bytes>",
//    "users": {"alice": {"salt": "<base64>", "iterations": 100000, "stored_key": "<base64>",
//                        "server_key": "<base64>", "groups": ["analysts"], "disabled": false}}}
// "decoy_key" makes the salt and iteration count the controller shows for a name that is not in
// the file: the same for every attempt at that name, like a real user's, so the login exchange
// does not tell which names exist.
//
// The file is owner-only (0600, owned by the controller's user), refused otherwise, and written
// atomically (crypto/private_file.h).
// Threading: UserFile is a value (not synchronised); UserStore is thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "crypto/crypto.h"
#include "testudo/status.h"

namespace testudo::auth {

inline constexpr std::int64_t kUserFileFormatVersion = 1;
// RFC 7677 asks for at least 4096. The cost falls on the client at each login (the controller
// keeps StoredKey and ServerKey and does no PBKDF2): 100,000 rounds of PBKDF2-HMAC-SHA-256 take
// about 25 ms with OpenSSL on a 2020s x86 core (measured on the CI machine, loaded).
inline constexpr std::uint32_t kMinScramIterations = 4096;
inline constexpr std::uint32_t kDefaultScramIterations = 100'000;
// Above this a client refuses the controller's iteration count (seconds of CPU per login).
inline constexpr std::uint32_t kMaxScramIterations = 10'000'000;
inline constexpr std::size_t kScramSaltBytes = 16;
inline constexpr std::size_t kMaxUserFileBytes = 8u << 20;
inline constexpr std::size_t kMaxUserNameBytes = 64;

// 1..64 bytes of [A-Za-z0-9._@-], starting with a letter or digit: a name that needs no
// escaping in SCRAM (',' '='), in policy identities ("user:<name>") or in audit lines.
Status check_user_name(std::string_view name);
// The same rule for group names (policy "login-group:<name>").
Status check_group_name(std::string_view name);

// The SCRAM-SHA-256 verifier of one password.
struct ScramVerifier {
  std::vector<std::byte> salt;
  std::uint32_t iterations = kDefaultScramIterations;
  crypto::Digest stored_key{};  // H(ClientKey), ClientKey = HMAC(SaltedPassword, "Client Key")
  crypto::Digest server_key{};  // HMAC(SaltedPassword, "Server Key")
};

// SaltedPassword = Hi(SASLprep(password), salt, iterations) (RFC 5802 section 2.2). Errors
// (a password SASLprep refuses) never contain the password.
StatusOr<crypto::Digest> scram_salted_password(std::string_view password, std::span<const std::byte> salt,
                                               std::uint32_t iterations);
// StoredKey and ServerKey from a SaltedPassword.
ScramVerifier scram_verifier_from_salted(const crypto::Digest& salted_password, std::vector<std::byte> salt,
                                         std::uint32_t iterations);
// A verifier for `password` with a fresh random salt.
StatusOr<ScramVerifier> make_scram_verifier(std::string_view password, std::uint32_t iterations);

struct UserEntry {
  ScramVerifier verifier;
  std::vector<std::string> groups;
  bool disabled = false;  // the password still verifies, then the login is refused as disabled
};

class UserFile {
 public:
  // An empty file with a fresh decoy key.
  static StatusOr<UserFile> create();
  // Errors name the JSON path and never include a verifier.
  static StatusOr<UserFile> parse(std::string_view text);
  // Reads `path` (owner-only, else kPermissionDenied naming its mode and the fix; kNotFound when
  // absent) and parses it; errors name the file.
  static StatusOr<UserFile> load(const std::string& path);
  std::string serialize() const;
  // Writes atomically, 0600 (a temporary file renamed over `path`).
  Status save(const std::string& path) const;

  const UserEntry* find(std::string_view name) const;
  const std::map<std::string, UserEntry, std::less<>>& users() const { return users_; }
  // Adds or replaces a user; the name must pass check_user_name, the groups check_group_name.
  Status set(const std::string& name, UserEntry entry);
  bool remove(std::string_view name);

  // What the controller shows for a name that is not in the file: a salt derived from the
  // decoy key and the name, the iteration count most users have, and keys no proof matches.
  ScramVerifier decoy_verifier(std::string_view name) const;

 private:
  UserFile() = default;
  void update_decoy_iterations();
  crypto::Digest decoy_key_{};
  std::uint32_t decoy_iterations_ = kDefaultScramIterations;
  std::map<std::string, UserEntry, std::less<>> users_;
};

// The controller's view of a user file that an administrator changes while it runs
// (`testudo users add` and friends): current() re-reads the file when its inode, size or
// modification time changed since the last look (a stat per login), so changes apply to the
// next login without a restart. A file that became unusable (malformed, loose mode, removed)
// fails every password login until it is fixed: the controller never falls back to an older
// copy, which might still hold a removed user. Thread-safe.
class UserStore {
 public:
  // Loads `path` now; an error (kNotFound, kPermissionDenied, kInvalidArgument) names it.
  static StatusOr<std::shared_ptr<UserStore>> open(std::string path);
  StatusOr<std::shared_ptr<const UserFile>> current();
  const std::string& path() const { return path_; }

 private:
  struct Stamp {
    std::uint64_t device = 0, inode = 0, size = 0;
    std::int64_t mtime_ns = 0, ctime_ns = 0;
    bool operator==(const Stamp&) const = default;
  };
  explicit UserStore(std::string path) : path_(std::move(path)) {}
  StatusOr<Stamp> stamp() const;

  const std::string path_;
  std::mutex mu_;
  Stamp stamp_;                             // GUARDED_BY(mu_)
  bool loaded_before_ = false;              // GUARDED_BY(mu_)
  StatusOr<std::shared_ptr<const UserFile>> file_ = internal_error("not loaded");  // GUARDED_BY(mu_)
};

}  // namespace testudo::auth
