#include "auth/admission.h"

#include "crypto/crypto.h"

namespace testudo::auth {

class CapabilityAdmission::Exchange final : public AdmissionExchange {
 public:
  Exchange(const Capabilities& capabilities, IdentityGate& gate, const LoginRegistry* logins,
           net::Connection& connection)
      : capabilities_(capabilities), gate_(gate), logins_(logins), connection_(connection) {}

  std::optional<StatusOr<Admitted>> on_message(const wire::Message& m) override {
    if (login_) return on_login_step(m);
    if (m.envelope.kind != wire::MessageKind::kHello) return refuse("expected hello, got something else");
    auto hello = decode_hello(m.envelope.text);
    if (!hello.ok()) return refuse(hello.status().message());
    auto exporter = connection_.export_keying_material(kExporterLabel, wire::role_name(hello->role));
    if (!exporter.ok()) return refuse(exporter.status().message());
    const Capability& capability = hello->role == wire::Role::kEngine ? capabilities_.engine : capabilities_.client;
    // No capability, the wrong one, or another role's (T1, T2); a proof made on another TLS
    // session (replayed or relayed, T5) does not verify either. Then the gate: who it is.
    const crypto::Digest expected = capability_proof(capability, hello->role, *exporter);
    const bool proof_ok = crypto::constant_time_equal(expected, hello->proof);
    if (hello->login != LoginMethod::kKey) return begin_login(*hello, proof_ok);
    auto identity = gate_.admit(hello->role, proof_ok, connection_);
    if (!identity.ok()) return StatusOr<Admitted>(identity.status());
    return StatusOr<Admitted>(Admitted{std::move(identity).value(), std::move(hello->instance)});
  }

 private:
  struct Login {
    LoginMethod method = LoginMethod::kKey;
    std::unique_ptr<LoginServer> server;
    std::string instance;
    std::string checked_claim;  // the claimed identity whose lockout was checked last
  };

  std::optional<StatusOr<Admitted>> begin_login(Hello& hello, bool proof_ok) {
    if (hello.role != wire::Role::kClient) return refuse("engines join with their key, not with a login");
    // An address locked out for failed logins learns nothing more (T6).
    if (Status locked = gate_.check_login_lockout("", connection_); !locked.ok()) return StatusOr<Admitted>(locked);
    if (!proof_ok) {
      auto refused = gate_.admit_login(hello.role, false, hello.login, "", StatusOr<LoginIdentity>(LoginIdentity{}),
                                       connection_);
      return StatusOr<Admitted>(refused.status());
    }
    if (logins_ == nullptr || !logins_->accepts(hello.login)) {
      const std::string accepted = logins_ ? logins_->accepted_names() : "";
      return refuse("this controller does not accept " + std::string(login_method_name(hello.login)) + " logins (" +
                    (accepted.empty() ? "keys only" : "it accepts keys and " + accepted) + ")");
    }
    // RFC 9266: every login method binds its proof to this TLS session.
    auto binding = connection_.export_keying_material(kChannelBindingLabel, "");
    if (!binding.ok()) return refuse(binding.status().message());
    auto server = logins_->begin(hello.login, *binding);
    if (!server.ok()) return refuse(server.status().message());
    login_.emplace(Login{hello.login, std::move(server).value(), std::move(hello.instance), {}});
    return run_step(hello.login_message);
  }

  std::optional<StatusOr<Admitted>> on_login_step(const wire::Message& m) {
    if (m.envelope.kind != wire::MessageKind::kLoginStep) return fail_login(permission_denied("expected the next login step"));
    return run_step(m.envelope.text);
  }

  std::optional<StatusOr<Admitted>> run_step(std::string_view message) {
    auto step = login_->server->step(message);
    // Whom the client claims to be is known from its first message on: a locked-out identity
    // is refused before its proof is even looked at.
    const std::string claimed = login_->server->claimed_identity();
    if (!claimed.empty() && claimed != login_->checked_claim) {
      login_->checked_claim = claimed;
      if (Status locked = gate_.check_login_lockout(claimed, connection_); !locked.ok()) return StatusOr<Admitted>(locked);
    }
    if (!step.ok()) return fail_login(step.status());
    if (!step->reply.empty() || !step->identity) {
      wire::Message reply;
      reply.envelope.kind = wire::MessageKind::kLoginStep;
      reply.envelope.text = std::move(step->reply);
      connection_.send(std::move(reply));
    }
    if (!step->identity) return std::nullopt;
    auto identity = gate_.admit_login(wire::Role::kClient, true, login_->method, claimed,
                                      StatusOr<LoginIdentity>(std::move(*step->identity)), connection_);
    if (!identity.ok()) return StatusOr<Admitted>(identity.status());
    return StatusOr<Admitted>(Admitted{std::move(identity).value(), std::move(login_->instance)});
  }

  std::optional<StatusOr<Admitted>> fail_login(Status why) {
    auto refused = gate_.admit_login(wire::Role::kClient, true, login_->method, login_->server->claimed_identity(),
                                     StatusOr<LoginIdentity>(std::move(why)), connection_);
    return StatusOr<Admitted>(refused.status());
  }

  std::optional<StatusOr<Admitted>> refuse(const std::string& reason) {
    gate_.record_refusal(connection_, reason);
    return StatusOr<Admitted>(permission_denied(reason));
  }

  const Capabilities& capabilities_;
  IdentityGate& gate_;
  const LoginRegistry* logins_;
  net::Connection& connection_;
  std::optional<Login> login_;
};

CapabilityAdmission::CapabilityAdmission(Capabilities capabilities, IdentityGate& gate, const LoginRegistry* logins)
    : capabilities_(capabilities), gate_(gate), logins_(logins) {}

std::unique_ptr<AdmissionExchange> CapabilityAdmission::begin(net::Connection& connection) {
  return std::make_unique<Exchange>(capabilities_, gate_, logins_, connection);
}

}  // namespace testudo::auth
