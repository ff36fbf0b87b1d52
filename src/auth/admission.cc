#include "auth/admission.h"

#include "crypto/crypto.h"

namespace testudo::auth {

class CapabilityAdmission::Exchange final : public AdmissionExchange {
 public:
  Exchange(const Capabilities& capabilities, IdentityGate& gate, net::Connection& connection)
      : capabilities_(capabilities), gate_(gate), connection_(connection) {}

  std::optional<StatusOr<Admitted>> on_message(const wire::Message& m) override {
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
    auto identity = gate_.admit(hello->role, proof_ok, connection_);
    if (!identity.ok()) return StatusOr<Admitted>(identity.status());
    return StatusOr<Admitted>(Admitted{std::move(identity).value(), std::move(hello->instance)});
  }

 private:
  std::optional<StatusOr<Admitted>> refuse(const std::string& reason) {
    gate_.record_refusal(connection_, reason);
    return StatusOr<Admitted>(permission_denied(reason));
  }

  const Capabilities& capabilities_;
  IdentityGate& gate_;
  net::Connection& connection_;
};

CapabilityAdmission::CapabilityAdmission(Capabilities capabilities, IdentityGate& gate)
    : capabilities_(capabilities), gate_(gate) {}

std::unique_ptr<AdmissionExchange> CapabilityAdmission::begin(net::Connection& connection) {
  return std::make_unique<Exchange>(capabilities_, gate_, connection);
}

}  // namespace testudo::auth
