// Logins that expire (a token's "exp"): the connection ends the moment its login does, unless
// the client renewed it on the admitted connection before (auth/login.h, LoginClient::renew).
#include "base/log.h"
#include "controller/hub.h"

namespace testudo::controller {

using wire::MessageKind;

void Hub::arm_login_expiry(Peer& peer) {
  peer.login_expiry.reset();
  if (!peer.admitted || peer.identity.login == auth::LoginMethod::kKey || peer.identity.not_after == 0) return;
  const std::int64_t now_ms = clock_.unix_micros() / 1000;
  const std::int64_t left_ms = std::max<std::int64_t>(0, peer.identity.not_after * 1000 - now_ms);
  const std::uint64_t serial = peer.serial;
  peer.login_expiry = clock_.after(std::chrono::milliseconds(left_ms), [this, serial] {
    Peer* p = peers_.find(serial);
    if (!p || !p->admitted || !p->connection->is_open()) return;
    const std::string why = "the " + std::string(auth::login_method_name(p->identity.login)) +
                            " login expired and was not renewed; log in again";
    gate_.record(&p->identity, p->connection->peer_address(), "disconnect", "rejected", {}, why);
    gate_.flush();
    reject(*p, why, /*audited=*/true);
  });
}

void Hub::renew_login(Peer& client, const wire::Message& message) {
  const auth::LoginMethod method = client.identity.login;
  const std::string method_name(auth::login_method_name(method));
  auto refuse = [&](const std::string& why) {
    const std::string reason = "login renewal refused: " + why;
    gate_.record(&client.identity, client.connection->peer_address(), "login.renew", "rejected", {}, reason);
    gate_.flush();
    reject(client, reason, /*audited=*/true);
  };
  if (method == auth::LoginMethod::kKey || client.identity.not_after == 0) {
    return refuse("this connection has no expiring login to renew");
  }
  if (logins_ == nullptr || !logins_->accepts(method)) {
    return refuse("this controller no longer accepts " + method_name + " logins");
  }
  auto binding = client.connection->export_keying_material(auth::kChannelBindingLabel, "");
  if (!binding.ok()) return refuse(binding.status().message());
  auto server = logins_->begin(method, *binding);
  if (!server.ok()) return refuse(server.status().message());
  auto step = (*server)->step(message.envelope.text);
  if (!step.ok()) return refuse(step.status().message());
  // Only methods that decide in one message renew (tokens); others log in again instead.
  if (!step->identity) return refuse("a " + method_name + " login cannot be renewed on a connection");
  auth::LoginIdentity& renewed = *step->identity;
  if (renewed.identity != client.identity.fingerprint) {
    return refuse("the new credential is for another identity than this connection's");
  }
  const std::int64_t now = clock_.unix_micros() / 1'000'000;
  if (renewed.expires_at != 0 && renewed.expires_at <= now) return refuse("the new credential has expired");
  client.identity.not_after = renewed.expires_at;
  client.identity.groups = std::move(renewed.groups);
  gate_.record(&client.identity, client.connection->peer_address(), "login.renew", "accepted", {},
               method_name + " login renewed until " + std::to_string(client.identity.not_after));
  arm_login_expiry(client);
  LOG_INFO("hub") << "client " << client.id << ": " << method_name << " login renewed";
  wire::Message accepted;
  accepted.envelope.kind = MessageKind::kLoginStep;
  client.connection->send(std::move(accepted));
}

}  // namespace testudo::controller
