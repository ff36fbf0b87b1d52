// Logins: who a client is when it does not join with its key alone (docs/security.md, "Logins").
//
// After the TLS handshake and the capability proof (capability.h), a client's hello may name a
// login method and carry its first message; the controller and the client then exchange
// kLoginStep messages until the method decides. The identity a login proves ("user:alice",
// "krb:alice@EXAMPLE.ORG", "token:<issuer>#<subject>", with groups) is what the policy, the
// audit log and result ownership use, exactly like a key fingerprint.
//
// What must hold for every method (docs/threat-model.md T5, T6, T20):
//   * channel binding: each proof depends on this TLS session's exporter value
//     (`channel_binding`, RFC 9266 "tls-exporter"), so a recorded login does not verify on
//     another session and a relay in the middle cannot pass one on;
//   * no secret (password, token, ticket) ever reaches a log, an audit line or an error
//     message: error texts are written for the peer and name no secret;
//   * failed logins count against the address and the claimed identity (login_limiter.h).
//
// Threading: a LoginServer lives on the controller's loop thread with its connection; a
// LoginClient on the client's loop thread. Neither is thread-safe.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "testudo/status.h"

namespace testudo::auth {

enum class LoginMethod : std::uint8_t {
  kKey = 0,       // the client's key (TLS) is its identity: no login exchange
  kPassword = 1,  // SCRAM-SHA-256-PLUS
  kToken = 2,     // a JSON Web Token from a configured issuer
  kKerberos = 3,  // GSS-API with MIT Kerberos
};
// "key", "password", "token", "kerberos".
std::string_view login_method_name(LoginMethod method);
std::optional<LoginMethod> login_method_from_byte(std::uint8_t b);
// The inverse of login_method_name ("" is kKey); nullopt for anything else.
std::optional<LoginMethod> login_method_from_name(std::string_view name);

// RFC 9266 channel binding: the TLS 1.3 exporter for "EXPORTER-Channel-Binding" with an empty
// context. Both ends of one TLS session compute the same 32 bytes.
inline constexpr std::string_view kChannelBindingLabel = "EXPORTER-Channel-Binding";
using ChannelBinding = std::array<std::byte, 32>;

// What a login proved.
struct LoginIdentity {
  std::string identity;              // "user:alice", "krb:alice@EXAMPLE.ORG", "token:<iss>#<sub>"
  std::vector<std::string> groups;   // from the user file or the token's claims (policy "login-group:")
  std::int64_t expires_at = 0;       // Unix seconds after which the session must end (0: never)
};

// Largest login message either side accepts (a Kerberos AP-REQ with a PAC, a JWT with groups).
inline constexpr std::size_t kMaxLoginMessageBytes = 12 * 1024;

// The controller's half of one login, on one connection.
class LoginServer {
 public:
  struct Step {
    std::string reply;                      // sent to the client as a kLoginStep (may be empty)
    std::optional<LoginIdentity> identity;  // set: the login succeeded (after `reply` is sent)
  };
  virtual ~LoginServer() = default;
  // The client's next message (the first comes from the hello). An error refuses the login;
  // its message is said to the peer and audited, so it names no secret.
  virtual StatusOr<Step> step(std::string_view message) = 0;
  // Who the client says it is, as soon as a message has named it ("user:alice"); empty until
  // then. Failed logins are counted against it.
  virtual std::string claimed_identity() const = 0;
};

// The client's half of one login.
class LoginClient {
 public:
  virtual ~LoginClient() = default;
  virtual LoginMethod method() const = 0;
  // The first message (sent in the hello).
  virtual StatusOr<std::string> start(const ChannelBinding& binding) = 0;
  // The controller's next message; returns the answer to send, or nullopt when there is
  // nothing to send (the exchange is complete on this side). An error ends the login: the
  // controller failed to prove itself (e.g. a wrong SCRAM server signature).
  virtual StatusOr<std::optional<std::string>> step(std::string_view message) = 0;
  // Called on the welcome: OK only if the method completed (mutual authentication verified
  // where the method has it).
  virtual Status finished() = 0;
  // When the credential this login sent stops being valid (Unix seconds; 0: never, or the
  // method cannot say). Known after start() and renew().
  virtual std::int64_t expires_at() const { return 0; }
  // A fresh credential for the same identity, for a session that is already admitted: the
  // client link sends it as a kLoginStep before expires_at(); the controller answers with an
  // empty kLoginStep (accepted) or refuses and closes the connection. Methods that cannot
  // renew return kUnimplemented (their sessions end at expiry and the link logs in again).
  virtual StatusOr<std::string> renew() { return Status(StatusCode::kUnimplemented, "this login cannot be renewed"); }
};

// What a client was told to log in with (ClientOptions::login; the CLI's --user,
// --token-from, --kerberos).
struct LoginChoice {
  LoginMethod method = LoginMethod::kKey;
  std::string username;  // password
  // The password or the token, asked for when a session needs it (a token again when the
  // one it gave has expired). Its errors are said to the user as they are.
  std::function<StatusOr<std::string>()> secret;
  std::string service;   // kerberos: the controller's service principal (empty: the default)
};
using LoginClientFactory = std::function<StatusOr<std::unique_ptr<LoginClient>>()>;
// One LoginClient per session for `choice` against the controller at `controller_host`.
// kInvalidArgument for an incomplete choice (a password login without a user name...).
StatusOr<LoginClientFactory> make_login_client_factory(LoginChoice choice, const std::string& controller_host);

// The login methods a controller accepts, each with its factory. Empty: keys only (today's
// default). The controller adds one per configured method (--users, --token-issuers,
// --keytab).
class LoginRegistry {
 public:
  using Factory = std::function<StatusOr<std::unique_ptr<LoginServer>>(const ChannelBinding& binding)>;
  void add(LoginMethod method, Factory factory);
  bool accepts(LoginMethod method) const;
  // kInvalidArgument naming the method when this controller does not accept it (and which it
  // does).
  StatusOr<std::unique_ptr<LoginServer>> begin(LoginMethod method, const ChannelBinding& binding) const;
  // "password, token" (for messages); "" when none.
  std::string accepted_names() const;
  // {"password", "token"}: the methods beside keys, for `testudo status`.
  std::vector<std::string> accepted() const;

 private:
  std::map<LoginMethod, Factory> factories_;
};

}  // namespace testudo::auth
