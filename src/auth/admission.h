// The server half of joining a controller; open_session (session.h) is the client half.
//
// Every connection the controller accepts gets one AdmissionExchange before anything else:
// the hub hands it each message the connection sends until the exchange decides, and acts on
// the verdict (welcome or refusal). Nothing but the exchange ever sees a peer that is not
// admitted (docs/threat-model.md T17). CapabilityAdmission is the exchange of today's hello:
// a capability proof bound to this TLS session (capability.h: T1, T2, T5), then the identity
// gate decides who the peer is (trust mode, revocation, expiry, role binding, failed-login
// limits: T6, T14-T16). A client's hello may instead name a login method (login.h): the
// exchange then runs that method's LoginServer over kLoginStep messages (answering on the
// connection and returning "not decided yet" in between), and the gate admits the identity the
// login proved.
//
// Threading: the controller's loop thread, like the connections.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "auth/capability.h"
#include "auth/login.h"
#include "auth/policy.h"
#include "net/net.h"
#include "testudo/status.h"
#include "wire/message.h"

namespace testudo::auth {

// Who is on the other end of an admitted connection.
struct PeerIdentity {
  wire::Role role = wire::Role::kClient;
  std::string fingerprint;   // key fingerprint: the identity (owns a client's tasks)
  std::string name;          // certificate subject CN (policy "cn:" patterns)
  std::string serial_hex;
  std::int64_t not_after = 0;
  std::vector<std::string> chain;  // as presented; CA mode re-verifies it after a CRL reload
  // How the peer proved who it is. For a login, `fingerprint` holds the login's identity
  // ("user:alice"), `groups` its groups and `not_after` when the login expires (0: never); the
  // certificate the peer presented is a throwaway and `name`, `serial_hex`, `chain` are empty.
  LoginMethod login = LoginMethod::kKey;
  std::vector<std::string> groups;
  Subject subject() const { return {fingerprint, name, groups}; }
};

// Decides whether a peer whose capability proof was checked may join, and as whom. The
// controller's gatekeeper is the real one. Every answer is audited by the gate. A refusal's
// message is safe to send to the peer (it names no secret and nothing about other
// identities); kFailedPrecondition means "not trusted yet": an administrator may still accept
// the key, so the peer may wait and retry.
class IdentityGate {
 public:
  virtual ~IdentityGate() = default;
  virtual StatusOr<PeerIdentity> admit(wire::Role role, bool proof_ok, net::Connection& connection) = 0;
  // Records a refusal decided before the peer's identity was known (a malformed hello).
  virtual void record_refusal(net::Connection& connection, std::string_view reason) = 0;

  // Logins (login.h). Before a login is checked, and again once it names whom it claims to
  // be: an error (audited) if the address or that identity is locked out for failed logins.
  virtual Status check_login_lockout(std::string_view claimed, net::Connection& connection) = 0;
  // Decides a finished login: `outcome` is what the method proved, or why it failed (counted
  // against the address and `claimed`). Audited either way; never mentions a secret.
  virtual StatusOr<PeerIdentity> admit_login(wire::Role role, bool proof_ok, LoginMethod method,
                                             std::string_view claimed, StatusOr<LoginIdentity> outcome,
                                             net::Connection& connection) = 0;
};

struct Admitted {
  PeerIdentity identity;  // its role is the role the peer joins in
  std::string instance;   // the peer's process instance (Hello::instance): engines get their id back
};

// The exchange of one connection. Every refusal it returns is already audited.
class AdmissionExchange {
 public:
  virtual ~AdmissionExchange() = default;
  // The next message the connection sent. nullopt: not decided yet (the exchange may have
  // answered on the connection); otherwise the admitted peer, or why it is refused.
  virtual std::optional<StatusOr<Admitted>> on_message(const wire::Message& message) = 0;
};

class Admission {
 public:
  virtual ~Admission() = default;
  // Starts the exchange of a new connection; called once per connection. `connection`
  // outlives the exchange.
  virtual std::unique_ptr<AdmissionExchange> begin(net::Connection& connection) = 0;
};

// The hello of open_session: one message, a capability proof over this session's exporter.
class CapabilityAdmission final : public Admission {
 public:
  struct Capabilities {
    Capability client{};
    Capability engine{};
  };
  // `gate` (and `logins`, when given) outlive this object. Without `logins` only keys are
  // accepted.
  CapabilityAdmission(Capabilities capabilities, IdentityGate& gate, const LoginRegistry* logins = nullptr);
  std::unique_ptr<AdmissionExchange> begin(net::Connection& connection) override;

 private:
  class Exchange;
  Capabilities capabilities_;
  IdentityGate& gate_;
  const LoginRegistry* logins_;
};

}  // namespace testudo::auth
