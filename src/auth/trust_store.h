// The trust store: which client and engine identities (public keys) the controller accepts,
// in the manner of MCollective's trusted-keys directory and `salt-key` (docs/security.md,
// "Who may connect").
// A directory the controller owns (e.g. <profile>/security/trust), 0700, laid out so that an
// admin can also manage it by hand:
//   client/*.pem                accepted client identities (certificate or public key PEM;
//                               any file name)
//   engine/*.pem                accepted engine identities
//   pending/<role>-<64hex>.pem  identities seen in learn mode, waiting for an admin, with
//   pending/<role>-<64hex>.json {"role","fingerprint","name","peer","first_seen","last_seen",
//                               "attempts"}
//   revoked/<64hex>.pem         refused in every role, whatever client/ and engine/ hold
//   format.json                 {"version": 1}: this layout (kTrustStoreFormatVersion). A
//                               directory without it is version 1 and gets it at open()
//                               (a warning if the directory is not writable); a newer
//                               version is refused naming it (docs/formats.md)
// A fingerprint is "sha256:<64 lowercase hex>" of the key (SubjectPublicKeyInfo), computed by
// the FingerprintFn given to open(); the controller passes tls::key_fingerprint_of_pem.
//
// Safety: an attacker who can write here can admit themselves, so a directory or file
// writable by group/others, or owned by another user, is refused (kPermissionDenied naming the
// path and the fix). A file that does not parse is skipped with a warning (one bad file must
// not lock everyone out). Every write is atomic (temp file + rename, 0600) and is reflected in
// state() at once. Names from peers (CN, address) are untrusted: never used in file names,
// control characters replaced, capped at 256 bytes. Learn mode is bounded (T18).
//
// Threading: not thread-safe; the hub calls it on its loop thread. Writes fsync, so
// add_pending() and the admin operations block for a disk round trip.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "testudo/status.h"

namespace testudo::auth {

// Returns "sha256:<64 lowercase hex>" of the public key in a CERTIFICATE or PUBLIC KEY PEM
// block, or an error if the text is not one. The store hands it one PEM block only (from its
// "-----BEGIN" line to its "-----END" line), never a file's surrounding comments.
using FingerprintFn = std::function<StatusOr<std::string>(std::string_view pem)>;

enum class TrustState { kUnknown, kPending, kAccepted, kRevoked };
std::string_view trust_state_name(TrustState state);  // "unknown", "pending", ...

struct TrustEntry {
  std::string role;         // "client" | "engine"; empty for a revoked key (every role)
  std::string fingerprint;  // "sha256:<64 hex>"
  std::string name;         // from the peer (pending), the accept call, or the file name
  TrustState state = TrustState::kUnknown;
  std::string file;         // the .pem file holding it (the first one, if several)
  std::string peer;         // pending: the address it last connected from
  std::int64_t first_seen = 0;  // pending: unix seconds
  std::int64_t last_seen = 0;   // pending: unix seconds
  std::int64_t attempts = 0;    // pending: connections seen
};

// The layout version this code reads and writes (format.json).
inline constexpr std::int64_t kTrustStoreFormatVersion = 1;

struct TrustStoreOptions {
  // Most pending identities kept; add_pending of a new one beyond it is kResourceExhausted,
  // so a flood of fresh keys cannot fill the disk (T18).
  std::size_t max_pending = 1'000;
};

class TrustStore {
 public:
  // Opens (creating with mode 0700 where missing) `dir` and its client/, engine/, pending/
  // and revoked/ subdirectories, then loads them (reload()). Refuses a directory or file
  // writable by group/others or owned by another user, a format.json of a newer version
  // (kFailedPrecondition naming it) and a malformed one (kDataLoss naming the file).
  static StatusOr<std::unique_ptr<TrustStore>> open(const std::string& dir,
                                                    FingerprintFn fingerprint_of,
                                                    TrustStoreOptions options = {});

  TrustStore(const TrustStore&) = delete;
  TrustStore& operator=(const TrustStore&) = delete;

  // Rescans the directory (after an admin edited it by hand). Files that do not parse, and
  // names that do not fit the layout, are skipped with a line in warnings(); duplicates are
  // fine. An unsafe mode or owner is an error, and then the previous state is kept.
  Status reload();
  // Warnings from the last reload(), one line each, naming the file.
  const std::vector<std::string>& warnings() const { return warnings_; }

  // `fingerprint` with or without "sha256:". Revoked wins over accepted. O(1).
  TrustState state(std::string_view role, std::string_view fingerprint) const;

  // Learn mode: records an unknown identity as pending, writing its PEM and a JSON record.
  // Idempotent: an identity already pending has last_seen, peer and attempts updated (in
  // memory at once; its JSON record is rewritten at most once a minute, so a peer
  // reconnecting in a loop does not turn into a stream of disk writes). Checks
  // that `cert_pem` has `fingerprint`. An identity already accepted in `role` is left alone
  // (OK); a revoked one is kPermissionDenied; a new one beyond max_pending is
  // kResourceExhausted. `name` and `peer` are untrusted.
  Status add_pending(std::string_view role, std::string_view fingerprint, std::string_view cert_pem,
                     std::string_view name, std::string_view peer, std::int64_t now_unix);

  // Admin operations. `who` is a full fingerprint or a unique prefix of at least 8 hex digits,
  // with or without "sha256:", optionally preceded by "client:" or "engine:" to pick the role
  // when one key is known in both (like git). Too short or not hex -> kInvalidArgument;
  // ambiguous -> kInvalidArgument listing the candidates; no match -> kNotFound (listing the
  // pending identities, if any).

  // pending -> client/<64hex>.pem or engine/<64hex>.pem. Already accepted: returned as is.
  // Revoked: kFailedPrecondition.
  StatusOr<TrustEntry> accept(std::string_view who);
  // Trusts a key directly (auto_accept; a cluster trusting its own user's and engines' keys).
  // Idempotent. Removes a pending record of the same key and role. Revoked: kFailedPrecondition.
  StatusOr<TrustEntry> accept_pem(std::string_view role, std::string_view pem, std::string_view name);
  // pending -> deleted (the peer may show up again and be pending anew). Only pending entries.
  StatusOr<TrustEntry> reject(std::string_view who);
  // accepted or pending -> revoked/<64hex>.pem, in every role; the accepted files holding that
  // key are removed, whatever their names, and so are its pending records. Idempotent.
  StatusOr<TrustEntry> revoke(std::string_view who);
  // Revokes the key in `pem` (a certificate or public key) even if the store never knew it,
  // e.g. a CA-signed identity admitted by ca mode. Idempotent.
  StatusOr<TrustEntry> revoke_pem(std::string_view pem, std::string_view name);

  // Every entry, sorted by state (pending, accepted, revoked) then fingerprint, then role.
  // An accepted file whose key is revoked shows as revoked only.
  std::vector<TrustEntry> list() const;
  // One entry: the revoked one if the key is revoked, else the accepted, else the pending.
  StatusOr<TrustEntry> show(std::string_view who) const;

  const std::string& dir() const { return dir_; }

 private:
  // What the store knows about one key, in every role.
  struct KeyRecord {
    std::map<std::string, TrustEntry, std::less<>> accepted;  // by role
    std::map<std::string, std::vector<std::string>, std::less<>> accepted_files;  // every file
    std::map<std::string, TrustEntry, std::less<>> pending;   // by role
    std::map<std::string, std::int64_t, std::less<>> pending_written;  // by role: last_seen on disk
    std::unique_ptr<TrustEntry> revoked;
    std::string pem;  // one PEM block holding the key (for revoke)
    bool empty() const { return accepted.empty() && pending.empty() && !revoked; }
  };
  struct StringHash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  using KeyMap = std::unordered_map<std::string, KeyRecord, StringHash, std::equal_to<>>;

  TrustStore(std::string dir, FingerprintFn fingerprint_of, TrustStoreOptions options);

  Status check_dirs(bool create) const;
  Status check_format() const;
  StatusOr<KeyMap> scan(std::vector<std::string>& warnings) const;
  TrustEntry entry_for(const std::string& hex, std::string_view role) const;
  Status write_pending_json(const TrustEntry& e) const;
  void remove_pending_files(std::string_view role, const std::string& hex) const;
  // Resolves `who` to one key (64 hex) and, if given, a role.
  struct Match {
    std::string hex;
    std::string role;  // empty: not given
  };
  StatusOr<Match> resolve(std::string_view who) const;
  // The role `m` names, or the one role its key is pending in (ambiguous: an error).
  StatusOr<std::string> pending_role(const Match& m, const KeyRecord& rec) const;
  StatusOr<std::string> fingerprint_of_block(std::string_view pem_block) const;
  std::string path(std::string_view sub, std::string_view file) const;

  std::string dir_;
  FingerprintFn fingerprint_of_;
  TrustStoreOptions options_;
  KeyMap keys_;  // by 64 hex
  std::size_t pending_count_ = 0;
  std::vector<std::string> warnings_;
};

}  // namespace testudo::auth
