#include "controller/gatekeeper.h"

#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "base/log.h"

namespace testudo::controller {
namespace {

std::int64_t now_unix() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// "10.0.0.1:4000" -> "10.0.0.1", "[::1]:4000" -> "::1": failures count per host, not per port.
std::string host_of(const std::string& address) {
  auto colon = address.rfind(':');
  std::string host = colon == std::string::npos ? address : address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  return host;
}

std::string role_text(wire::Role role) { return std::string(wire::role_name(role)); }

std::string_view state_name(auth::TrustState s) {
  switch (s) {
    case auth::TrustState::kUnknown: return "unknown";
    case auth::TrustState::kPending: return "pending";
    case auth::TrustState::kAccepted: return "accepted";
    case auth::TrustState::kRevoked: return "revoked";
  }
  return "unknown";
}

nlohmann::json entry_json(const auth::TrustEntry& e) {
  return {{"role", e.role},   {"fingerprint", e.fingerprint}, {"name", e.name}, {"state", std::string(state_name(e.state))},
          {"peer", e.peer},   {"first_seen", e.first_seen},   {"file", e.file}};
}

// The modification time of a path, 0 if it is missing: enough to notice an edit, a rename
// into a directory (atomic writes) or a removal.
std::int64_t mtime_ns(const std::string& path) {
  struct stat st {};
  if (path.empty() || ::stat(path.c_str(), &st) != 0) return 0;
  return static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
}

}  // namespace

std::optional<TrustMode> parse_trust_mode(std::string_view name) {
  if (name == "manual") return TrustMode::kManual;
  if (name == "learn") return TrustMode::kLearn;
  if (name == "ca") return TrustMode::kCa;
  return std::nullopt;
}

std::string_view trust_mode_name(TrustMode mode) {
  switch (mode) {
    case TrustMode::kManual: return "manual";
    case TrustMode::kLearn: return "learn";
    case TrustMode::kCa: return "ca";
  }
  return "manual";
}

struct Gatekeeper::Impl {
  GatekeeperOptions options;
  std::unique_ptr<auth::TrustStore> trust;
  std::optional<tls::ChainVerifier> ca;  // ca mode only
  auth::Policy policy;
  std::unique_ptr<auth::AuditLog> audit;
  auth::LoginLimiter limiter;
  std::vector<std::int64_t> seen_mtimes;
  // Certificates of identities admitted since start (fingerprint -> PEM, name), so that one
  // the trust directory does not hold (ca mode, auto-accept races) can still be revoked.
  // Bounded: cleared when full; a forgotten one can still be revoked by placing its PEM in
  // trust/revoked/.
  std::unordered_map<std::string, std::pair<std::string, std::string>> admitted;
  static constexpr std::size_t kMaxAdmittedRemembered = 10'000;

  std::optional<std::pair<std::string, std::string>> seen_identity(const std::string& who) const {
    std::string hex = who.starts_with("sha256:") ? who.substr(7) : who;
    if (hex.size() < 8) return std::nullopt;
    const std::pair<std::string, std::string>* found = nullptr;
    for (const auto& [fp, entry] : admitted) {
      if (fp.compare(7, hex.size(), hex) != 0) continue;
      if (found != nullptr) return std::nullopt;  // ambiguous prefix
      found = &entry;
    }
    return found ? std::optional(*found) : std::nullopt;
  }

  // The controller's owners may do everything whatever the policy file says, so a policy
  // typo can never lock the operator out of their own cluster.
  bool is_owner(const PeerIdentity& who) const {
    return who.role == wire::Role::kClient &&
           std::find(options.owners.begin(), options.owners.end(), who.fingerprint) != options.owners.end();
  }

  explicit Impl(GatekeeperOptions o) : options(std::move(o)), limiter(options.login_limits) {}

  std::vector<std::string> watched_paths() const {
    const std::string& t = options.trust_dir;
    return {options.policy_file, t, t + "/client", t + "/engine", t + "/pending", t + "/revoked", options.crl_file};
  }
  std::vector<std::int64_t> current_mtimes() const {
    std::vector<std::int64_t> out;
    for (const auto& p : watched_paths()) out.push_back(mtime_ns(p));
    return out;
  }

  StatusOr<auth::Policy> load_policy() const {
    if (options.policy_file.empty()) return auth::Policy::owners_only(options.owners);
    return auth::Policy::load(options.policy_file);
  }

  // Is this certificate admissible in `role` right now? The reason is fit for the peer.
  Status check_trust(wire::Role role, const PeerIdentity& id, std::int64_t now) const {
    const std::string role_name = role_text(role);
    auth::TrustState state = trust->state(role_name, id.fingerprint);
    if (state == auth::TrustState::kRevoked) return permission_denied("identity " + id.fingerprint + " has been revoked");
    if (state == auth::TrustState::kAccepted) return ok_status();
    if (options.mode == TrustMode::kCa && ca) {
      Status chain = ca->verify(id.chain, now);
      if (chain.ok()) return ok_status();
      return permission_denied("certificate refused: " + chain.message());
    }
    // Pending or unknown: kFailedPrecondition, which the hub tells the peer as "awaiting trust".
    if (state == auth::TrustState::kPending) {
      return failed_precondition("identity " + id.fingerprint + " (" + role_name +
                               ") is waiting for approval; an administrator runs: testudo keys accept " +
                               id.fingerprint.substr(7, 16));
    }
    return failed_precondition("identity " + id.fingerprint + " (" + role_name + ") is not trusted by this controller");
  }
};

Gatekeeper::Gatekeeper() = default;
Gatekeeper::~Gatekeeper() {
  if (impl_ && impl_->audit) (void)impl_->audit->flush();
}

StatusOr<std::unique_ptr<Gatekeeper>> Gatekeeper::create(GatekeeperOptions options) {
  std::unique_ptr<Gatekeeper> g(new Gatekeeper());
  g->impl_ = std::make_unique<Impl>(std::move(options));
  Impl& impl = *g->impl_;
  const GatekeeperOptions& o = impl.options;
  if (o.mode == TrustMode::kCa && o.ca_file.empty()) {
    return invalid_argument("trust mode 'ca' needs --cafile (the CA whose certificates are admitted)");
  }
  if (o.mode != TrustMode::kCa && (!o.ca_file.empty() || !o.crl_file.empty())) {
    return invalid_argument("--cafile and --crlfile only apply with --trust ca");
  }
  if (o.auto_accept && o.mode != TrustMode::kLearn) return invalid_argument("--auto-accept only applies with --trust learn");
  TESTUDO_ASSIGN_OR_RETURN(impl.trust, auth::TrustStore::open(o.trust_dir, tls::key_fingerprint_of_pem));
  for (const auto& w : impl.trust->warnings()) LOG_WARN("trust") << w;
  if (o.mode == TrustMode::kCa) {
    TESTUDO_ASSIGN_OR_RETURN(auto verifier, tls::ChainVerifier::load(o.ca_file, o.crl_file));
    impl.ca.emplace(std::move(verifier));
  }
  TESTUDO_ASSIGN_OR_RETURN(impl.policy, impl.load_policy());
  if (!o.audit_log.empty()) {
    TESTUDO_ASSIGN_OR_RETURN(impl.audit, auth::AuditLog::open(o.audit_log));
    impl.audit->set_rotation(o.audit_max_bytes, 8);
  }
  impl.seen_mtimes = impl.current_mtimes();
  g->record(nullptr, "", "controller.start", "allowed", {},
            "trust mode " + std::string(trust_mode_name(o.mode)) + (o.auto_accept ? " (auto-accept)" : "") +
                ", policy " + (o.policy_file.empty() ? std::string("built-in (owners only)") : o.policy_file));
  return g;
}

TrustMode Gatekeeper::mode() const { return impl_->options.mode; }

StatusOr<PeerIdentity> Gatekeeper::admit(wire::Role role, bool proof_ok, net::Connection& connection) {
  Impl& impl = *impl_;
  const std::string& peer = connection.peer_address();
  const std::string host = host_of(peer);
  const auto now = auth::LoginLimiter::Clock::now();
  auto refuse = [&](const PeerIdentity* who, Status why) -> Status {
    record(who, peer, "login", "rejected", {}, why.message());
    flush();
    return why;
  };
  PeerIdentity id;
  id.role = role;
  auto facts = connection.peer_certificate();
  if (!facts.ok()) return refuse(nullptr, permission_denied("no usable client certificate: " + facts.status().message()));
  id.fingerprint = facts->key_fingerprint;
  id.name = facts->subject_cn.substr(0, 256);
  id.serial_hex = facts->serial_hex;
  id.not_after = facts->not_after;
  const bool known = impl.trust->state(role_text(role), id.fingerprint) == auth::TrustState::kAccepted;
  if (auto wait = known ? impl.limiter.identity_locked_out(id.fingerprint, now)
                        : impl.limiter.locked_out(host, id.fingerprint, now)) {
    // T6: checked before the proof, so a locked-out guesser learns nothing from further tries.
    return refuse(&id, resource_exhausted("too many failed logins from " + host + " or this identity; try again in " +
                                          std::to_string(wait->count()) + " s"));
  }
  if (!proof_ok) {
    impl.limiter.record_failure(host, id.fingerprint, now);
    return refuse(&id, permission_denied("capability proof failed for role " + role_text(role)));
  }
  Status valid = tls::check_validity_period(*facts, now_unix());
  if (!valid.ok()) return refuse(&id, permission_denied("certificate refused: " + valid.message()));
  if (impl.options.mode == TrustMode::kCa) {
    auto chain = connection.peer_certificate_chain();
    if (!chain.ok()) return refuse(&id, permission_denied(chain.status().message()));
    id.chain = std::move(chain).value();
  }
  Status trusted = impl.check_trust(role, id, now_unix());
  const bool unknown = impl.trust->state(role_text(role), id.fingerprint) == auth::TrustState::kUnknown;
  if (!trusted.ok() && impl.options.mode == TrustMode::kLearn && unknown) {
    if (impl.options.auto_accept) {
      auto added = impl.trust->accept_pem(role_text(role), facts->cert_pem, id.name);
      if (!added.ok()) return refuse(&id, unavailable("cannot record the new identity: " + added.status().message()));
      record(&id, peer, "keys.accept", "allowed", {}, "auto-accept (learn mode)");
      trusted = ok_status();
    } else {
      Status pending = impl.trust->add_pending(role_text(role), id.fingerprint, facts->cert_pem, id.name, peer, now_unix());
      if (!pending.ok()) return refuse(&id, pending);
      return refuse(&id, impl.check_trust(role, id, now_unix()));
    }
  }
  if (!trusted.ok()) return refuse(&id, trusted);
  impl.limiter.record_success(host, id.fingerprint);
  if (impl.admitted.size() >= Impl::kMaxAdmittedRemembered) impl.admitted.clear();
  impl.admitted[id.fingerprint] = {facts->cert_pem, id.name};
  record(&id, peer, "login", "accepted");
  return id;
}

void Gatekeeper::record_refusal(net::Connection& connection, std::string_view reason) {
  record(nullptr, connection.peer_address(), "protocol", "rejected", {}, reason);
  flush();
}

Status Gatekeeper::check_login_lockout(std::string_view claimed, net::Connection& connection) {
  const std::string& peer = connection.peer_address();
  auto wait = impl_->limiter.locked_out(host_of(peer), claimed, auth::LoginLimiter::Clock::now());
  if (!wait) return ok_status();
  Status why = resource_exhausted("too many failed logins from " + host_of(peer) + " or this identity; try again in " +
                                  std::to_string(wait->count()) + " s");
  PeerIdentity who;
  who.fingerprint = std::string(claimed);
  record(claimed.empty() ? nullptr : &who, peer, "login", "rejected", {}, why.message());
  flush();
  return why;
}

StatusOr<PeerIdentity> Gatekeeper::admit_login(wire::Role role, bool proof_ok, auth::LoginMethod method,
                                               std::string_view claimed, StatusOr<auth::LoginIdentity> outcome,
                                               net::Connection& connection) {
  Impl& impl = *impl_;
  const std::string& peer = connection.peer_address();
  const std::string host = host_of(peer);
  const auto now = auth::LoginLimiter::Clock::now();
  const std::string method_name(auth::login_method_name(method));
  PeerIdentity id;
  id.role = role;
  id.login = method;
  id.fingerprint = std::string(claimed);
  auto refuse = [&](Status why) -> Status {
    impl.limiter.record_failure(host, claimed, now);
    record(claimed.empty() ? nullptr : &id, peer, "login", "rejected", {}, method_name + " login: " + why.message());
    flush();
    return Status(why.code(), method_name + " login refused: " + why.message());
  };
  if (!proof_ok) return refuse(permission_denied("capability proof failed for role " + role_text(role)));
  if (role != wire::Role::kClient) return refuse(permission_denied("only clients log in; engines join with their key"));
  if (!outcome.ok()) return refuse(outcome.status());
  auth::LoginIdentity& login = *outcome;
  // A method that proved someone other than whom it claimed is a bug in that method: refuse.
  if (login.identity.empty() || (!claimed.empty() && login.identity != claimed)) {
    return refuse(permission_denied("the login did not establish an identity"));
  }
  id.fingerprint = login.identity;
  id.groups = std::move(login.groups);
  id.not_after = login.expires_at;
  if (id.not_after != 0 && now_unix() >= id.not_after) return refuse(permission_denied("the credential has expired"));
  impl.limiter.record_success(host, id.fingerprint);
  record(&id, peer, "login", "accepted", {}, method_name + " login");
  return id;
}

Status Gatekeeper::still_admissible(const PeerIdentity& who) const {
  const std::int64_t now = now_unix();
  if (who.login != auth::LoginMethod::kKey) {
    // A login's expiry is exclusive (a JWT's "exp" is the first second it is invalid).
    if (who.not_after != 0 && now >= who.not_after) return permission_denied("the login has expired");
    return ok_status();
  }
  if (who.not_after != 0 && now > who.not_after) return permission_denied("certificate expired");
  return impl_->check_trust(who.role, who, now);
}

bool Gatekeeper::allows(const PeerIdentity& who, auth::Operation op) const {
  return impl_->is_owner(who) || impl_->policy.allows(who.subject(), op);
}

Decision Gatekeeper::authorize(const PeerIdentity& who, const std::string& peer, const AccessRequest& request,
                               const AuditDetails& details) {
  const Impl& impl = *impl_;
  const auth::Subject subject = who.subject();
  const auth::Operation op = request.op;
  const bool owner = impl.is_owner(who);
  const bool everywhere = owner || impl.policy.allows_on_every_engine(subject, op);
  Decision d;
  d.allowed = true;
  std::string note;  // said in the audit line of an allowed request
  switch (request.scope) {
    case AccessRequest::Scope::kNoEngine:
      if (!owner && !impl.policy.allows(subject, op)) {
        d.allowed = false;
        d.reason = impl.policy.explain_denial(subject, op, nullptr);
      }
      break;
    case AccessRequest::Scope::kWholeCluster:
      if (!everywhere) {
        d.allowed = false;
        d.reason = impl.policy.explain_denial(subject, op, nullptr) + " on every engine (whole-cluster " +
                   std::string(auth::operation_name(op)) + ")";
      }
      break;
    case AccessRequest::Scope::kEachOf:
      if (everywhere) break;
      for (const auth::EngineFacts& engine : request.engines) {
        if (!impl.policy.allows(subject, op, engine)) {
          d.allowed = false;
          d.reason = impl.policy.explain_denial(subject, op, &engine);
          break;
        }
      }
      break;
    case AccessRequest::Scope::kAnyOf:
      if (everywhere) break;
      d.engines.emplace();
      for (const auth::EngineFacts& engine : request.engines) {
        if (impl.policy.allows(subject, op, engine)) d.engines->push_back(engine.id);
      }
      if (d.engines->empty()) {
        // Never "allowed on none": to the scheduler an empty set means any engine.
        d.allowed = false;
        d.engines.reset();
        d.reason = "no connected engine is one this identity may use for '" + std::string(auth::operation_name(op)) + "'";
      } else {
        note = "load-balanced over the " + std::to_string(d.engines->size()) + " engine(s) the policy allows";
      }
      break;
  }
  record(&who, peer, auth::operation_name(op), d.allowed ? "allowed" : "denied", details, d.allowed ? note : d.reason);
  if (!d.allowed) flush();  // a denial is on disk before the peer hears of it
  return d;
}

void Gatekeeper::record(const PeerIdentity* who, const std::string& peer, std::string_view operation,
                        std::string_view outcome, const AuditDetails& details, std::string_view reason) {
  if (!impl_->audit) return;
  auth::AuditEvent e;
  e.operation = std::string(operation);
  e.outcome = std::string(outcome);
  if (who) {
    e.identity = who->fingerprint;
    e.name = who->name;
    e.role = role_text(who->role);
  }
  e.peer = peer;
  e.targets = details.targets;
  e.code_sha256 = details.code_sha256;
  e.task_id = details.task_id;
  e.reason = std::string(reason);
  impl_->audit->record(e);
}

Status Gatekeeper::reload() {
  Impl& impl = *impl_;
  impl.seen_mtimes = impl.current_mtimes();
  Status trust = impl.trust->reload();
  for (const auto& w : impl.trust->warnings()) LOG_WARN("trust") << w;
  if (!trust.ok()) LOG_ERROR("trust") << "reloading the trust directory: " << trust.message();
  if (impl.options.mode == TrustMode::kCa) {
    auto verifier = tls::ChainVerifier::load(impl.options.ca_file, impl.options.crl_file);
    if (verifier.ok()) {
      impl.ca.emplace(std::move(verifier).value());
    } else {
      // The old CA and CRL stay in force: a half-written CRL must not open the door.
      LOG_ERROR("trust") << "keeping the previous CA and CRL: " << verifier.status().message();
      record(nullptr, "", "crl.reload", "error", {}, verifier.status().message());
    }
  }
  auto policy = impl.load_policy();
  if (!policy.ok()) {
    LOG_ERROR("policy") << "keeping the previous policy: " << policy.status().message();
    record(nullptr, "", "policy.reload", "error", {}, policy.status().message());
    flush();
    return policy.status();
  }
  impl.policy = std::move(policy).value();
  LOG_INFO("policy") << "policy and trust directory reloaded";
  record(nullptr, "", "policy.reload", "allowed");
  flush();
  return ok_status();
}

bool Gatekeeper::reload_if_changed() {
  if (impl_->current_mtimes() == impl_->seen_mtimes) return false;
  (void)reload();
  return true;
}

StatusOr<std::string> Gatekeeper::key_admin(const PeerIdentity& who, const std::string& peer,
                                            const KeyAdminRequest& request) {
  Impl& impl = *impl_;
  using Action = KeyAdminRequest::Action;
  const std::string& target = request.who;
  StatusOr<auth::TrustEntry> entry = not_found("");
  switch (request.action) {
    case Action::kList: {
      nlohmann::json entries = nlohmann::json::array();
      for (const auto& e : impl.trust->list()) entries.push_back(entry_json(e));
      return nlohmann::json{{"mode", std::string(trust_mode_name(impl.options.mode))}, {"entries", entries}}.dump(
          -1, ' ', false, nlohmann::json::error_handler_t::replace);
    }
    case Action::kShow: entry = impl.trust->show(target); break;
    case Action::kAccept: entry = impl.trust->accept(target); break;
    case Action::kReject: entry = impl.trust->reject(target); break;
    case Action::kRevoke:
      entry = impl.trust->revoke(target);
      if (!entry.ok() && entry.status().code() == StatusCode::kNotFound) {
        // Not in the trust directory (e.g. admitted by the CA): revoke a key seen since start.
        if (auto seen = impl.seen_identity(target)) entry = impl.trust->revoke_pem(seen->first, seen->second);
      }
      break;
  }
  if (request.action != Action::kShow) {
    record(&who, peer, "keys." + std::string(key_action_name(request.action)), entry.ok() ? "allowed" : "error", {},
           entry.ok() ? entry->fingerprint : entry.status().message());
    flush();
  }
  if (!entry.ok()) return entry.status();
  impl.seen_mtimes = impl.current_mtimes();  // our own change; nothing to reload
  return nlohmann::json{{"entry", entry_json(*entry)}}.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

Status Gatekeeper::trust_identity(wire::Role role, const std::string& cert_pem, const std::string& name) {
  auto entry = impl_->trust->accept_pem(role_text(role), cert_pem, name);
  if (!entry.ok()) return entry.status().with_context("trusting the " + name);
  impl_->seen_mtimes = impl_->current_mtimes();
  return ok_status();
}

void Gatekeeper::flush() {
  if (!impl_->audit) return;
  Status st = impl_->audit->flush();
  if (!st.ok()) LOG_ERROR("audit") << "cannot write the audit log: " << st.message();
}

}  // namespace testudo::controller
