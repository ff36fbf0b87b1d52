// The server half of joining a controller; open_session (session.h) is the client half.
//
// Every connection the controller accepts gets one AdmissionExchange before anything else:
// the hub hands it each message the connection sends until the exchange decides, and acts on
// the verdict (welcome or refusal). Nothing but the exchange ever sees a peer that is not
// admitted (docs/threat-model.md T17). CapabilityAdmission is the exchange of today's hello:
// a capability proof bound to this TLS session (capability.h: T1, T2, T5), then the identity
// gate decides who the peer is (trust mode, revocation, expiry, role binding, failed-login
// limits: T6, T14-T16). Login methods that need more than one message (challenge and response)
// plug in as further exchanges: they answer on the connection and return "not decided yet".
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
  Subject subject() const { return {fingerprint, name}; }
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
  // `gate` outlives this object.
  CapabilityAdmission(Capabilities capabilities, IdentityGate& gate);
  std::unique_ptr<AdmissionExchange> begin(net::Connection& connection) override;

 private:
  class Exchange;
  Capabilities capabilities_;
  IdentityGate& gate_;
};

}  // namespace testudo::auth
