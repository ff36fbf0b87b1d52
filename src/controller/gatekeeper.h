// The controller's door and rulebook (docs/security.md: "Who may connect", "What they may do").
//   door:     who may connect — the trust mode (manual trust directory, learn-on-first-use
//             with `testudo keys accept`, or a CA with a revocation list), revocation, expiry
//             (T14, T15), role binding (T16) and failed-login limits per address and identity (T6);
//   rulebook: what an admitted client may do — the policy file, default deny (T10);
//   record:   one audit line (JSON) for every admission, refusal and operation.
// The hub asks (one question per request: authorize()), the gatekeeper decides; it never
// sees payloads, only their SHA-256.
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

#include "auth/admission.h"
#include "auth/audit_log.h"
#include "auth/login_limiter.h"
#include "auth/policy.h"
#include "auth/trust_store.h"
#include "controller/requests.h"
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

using PeerIdentity = auth::PeerIdentity;

// What one audited operation touched.
struct AuditDetails {
  std::vector<std::uint32_t> targets;
  std::string code_sha256;  // hex of the code or pickled function, never the code
  std::uint64_t task_id = 0;
};

// The question authorize() answers: may this identity do `op` on these engines?
struct AccessRequest {
  enum class Scope {
    kNoEngine,     // an operation without engines (status, keys, abort)
    kWholeCluster, // every engine, present and future (cluster shutdown): only a grant not
                   // limited to some engines covers it
    kEachOf,       // every one of `engines` (direct requests, interrupt, engine shutdown)
    kAnyOf,        // one of `engines`, picked later (load-balanced requests)
  };
  auth::Operation op = auth::Operation::kStatus;
  Scope scope = Scope::kNoEngine;
  std::vector<auth::EngineFacts> engines;  // kEachOf, kAnyOf: the engines concerned
};

struct Decision {
  bool allowed = false;
  // Why not (said to the peer and written to the audit log); empty when allowed.
  std::string reason;
  // kAnyOf: the engines among those asked about that the identity may use (never empty when
  // allowed); unset when no rule limits it to some engines (it may use any engine).
  std::optional<std::vector<std::uint32_t>> engines;
};

// Threading: the controller's loop thread only.
class Gatekeeper final : public auth::IdentityGate {
 public:
  static StatusOr<std::unique_ptr<Gatekeeper>> create(GatekeeperOptions options);
  ~Gatekeeper() override;

  // auth::IdentityGate: decides whether the peer on `connection` may join in `role`.
  // `proof_ok` says whether its capability proof verified. Audited either way.
  StatusOr<PeerIdentity> admit(wire::Role role, bool proof_ok, net::Connection& connection) override;
  void record_refusal(net::Connection& connection, std::string_view reason) override;
  // Logins (auth/login.h): the same failed-login limits as keys, per address and per claimed
  // identity; the identity a login proved is admitted as a client (never an engine).
  Status check_login_lockout(std::string_view claimed, net::Connection& connection) override;
  StatusOr<PeerIdentity> admit_login(wire::Role role, bool proof_ok, auth::LoginMethod method, std::string_view claimed,
                                     StatusOr<auth::LoginIdentity> outcome, net::Connection& connection) override;

  // OK while the identity would still be admitted now (not revoked, not removed from the
  // trust directory, certificate not expired, CA chain still valid; for a login: not expired).
  // Not audited.
  Status still_admissible(const PeerIdentity& who) const;

  // The authorization question of every request, answered from the policy (default deny; the
  // controller's owners may do everything) and written to the audit log (allowed or denied,
  // with `details`); denials are flushed at once. `peer` is the peer's address.
  Decision authorize(const PeerIdentity& who, const std::string& peer, const AccessRequest& request,
                     const AuditDetails& details = {});
  // The same question without an audit line, for a check inside an operation that was
  // authorized and audited already (may a query also show others' results?).
  bool allows(const PeerIdentity& who, auth::Operation op) const;

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
  // Returns the JSON reply body; errors (no such key, ambiguous prefix...) are for the peer.
  StatusOr<std::string> key_admin(const PeerIdentity& who, const std::string& peer, const KeyAdminRequest& request);

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
