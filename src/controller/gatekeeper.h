// The controller's door and rulebook (docs/security.md: "Who may connect", "What they may do").
//   door:     who may connect — the trust mode (manual trust directory, learn-on-first-use
//             with `testudo keys accept`, or a CA with a revocation list), revocation, expiry
//             (T14, T15), role binding (T16) and failed-login limits per address and identity (T6);
//   rulebook: what an admitted client may do — the policy file, default deny (T10);
//   record:   one audit line (JSON) for every admission, refusal and operation.
// The hub asks, the gatekeeper decides; it never sees payloads, only their SHA-256.
// Reloads (SIGHUP, or a changed policy file / trust directory / CRL) never drop connections
// by themselves; the hub re-checks its peers with still_admissible() afterwards.
// Threading: the hub's loop thread only.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "auth/audit_log.h"
#include "auth/login_limiter.h"
#include "auth/policy.h"
#include "auth/trust_store.h"
#include "net/net.h"
#include "testudo/status.h"
#include "tls/tls.h"
#include "wire/message.h"

namespace testudo::controller {

enum class TrustMode { kManual, kLearn, kCa };
std::optional<TrustMode> parse_trust_mode(std::string_view name);  // "manual", "learn", "ca"
std::string_view trust_mode_name(TrustMode mode);

struct GatekeeperOptions {
  TrustMode mode = TrustMode::kManual;
  // learn: admit unknown identities at once (and record them as accepted). For a trusted network.
  bool auto_accept = false;
  std::string trust_dir;    // security/trust (see auth/trust_store.h for its layout)
  std::string ca_file;      // ca mode: certificates signed by this CA are admitted
  std::string crl_file;     // ca mode, optional: revocation list of that CA
  std::string policy_file;  // empty: the built-in policy (nobody but `owners` may do anything)
  // Key fingerprints of the controller's owners (the user running it): they may do
  // everything, whatever the policy file says.
  std::vector<std::string> owners;
  std::string audit_log;    // JSON lines, 0600; empty: no audit file
  std::uint64_t audit_max_bytes = 256ull << 20;  // then rotated to .1 ... .8 (0: never)
  auth::LoginLimiterOptions login_limits;
};

// Who is on the other end of an admitted connection.
struct PeerIdentity {
  wire::Role role = wire::Role::kClient;
  std::string fingerprint;   // key fingerprint: the identity
  std::string name;          // certificate subject CN (policy "cn:" patterns)
  std::string serial_hex;
  std::int64_t not_after = 0;
  std::vector<std::string> chain;  // as presented; ca mode re-verifies it after a CRL reload
  auth::Subject subject() const { return {fingerprint, name}; }
};

// What one audited operation touched.
struct AuditDetails {
  std::vector<std::uint32_t> targets;
  std::string code_sha256;  // hex of the code or pickled function, never the code
  std::uint64_t task_id = 0;
};

class Gatekeeper {
 public:
  static StatusOr<std::unique_ptr<Gatekeeper>> create(GatekeeperOptions options);
  ~Gatekeeper();

  // Decides whether the peer on `connection` may join in `role`. `proof_ok` says whether its
  // capability proof verified. Audited either way; a refusal's message is safe to send to the
  // peer (it names no secret and nothing about other identities).
  StatusOr<PeerIdentity> admit(wire::Role role, bool proof_ok, net::Connection& connection);

  // OK while the identity would still be admitted now (not revoked, not removed from the
  // trust directory, certificate not expired, CA chain still valid). Not audited.
  Status still_admissible(const PeerIdentity& who) const;

  // Policy questions (not audited; see record()).
  bool may(const PeerIdentity& who, auth::Operation op) const;
  bool may(const PeerIdentity& who, auth::Operation op, const auth::EngineFacts& engine) const;
  // True if some rule allows `op` on every engine, so no per-engine filtering is needed.
  bool may_everywhere(const PeerIdentity& who, auth::Operation op) const;
  std::string explain_denial(const PeerIdentity& who, auth::Operation op, const auth::EngineFacts* engine) const;

  // One audit line. `who` may be null (a peer not yet identified).
  void record(const PeerIdentity* who, const std::string& peer, std::string_view operation, std::string_view outcome,
              const AuditDetails& details = {}, std::string_view reason = {});

  // Re-reads the policy file, the trust directory and the CRL. A broken policy file is refused
  // (error returned and audited) and the old policy stays in force.
  Status reload();
  // Reloads if the policy file, the trust directory or the CRL changed since the last look.
  // Returns true if anything was reloaded (the hub then re-checks its peers).
  bool reload_if_changed();

  // `testudo keys list|show|accept|reject|revoke` on behalf of `who` (already authorized).
  // Returns the JSON reply body.
  StatusOr<std::string> key_admin(const PeerIdentity& who, const std::string& peer, std::string_view request_json);

  // Adds a certificate's key to the trust directory for `role` (idempotent; a revoked key
  // stays revoked). For the identities the controller trusts from the start.
  Status trust_identity(wire::Role role, const std::string& cert_pem, const std::string& name);

  // Writes buffered audit lines (called every 20 ms and after every refusal).
  void flush();

  TrustMode mode() const;

 private:
  Gatekeeper();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace testudo::controller
