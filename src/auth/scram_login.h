// Password logins: SCRAM-SHA-256-PLUS (RFC 5802, RFC 7677) with tls-exporter channel binding
// (RFC 9266), over GNU SASL (libgsasl 2.2). The password never crosses the wire; the controller
// keeps only verifiers (user_file.h); each side proves itself to the other (the client checks
// the server signature); the proof covers this TLS session's exporter value, so a recorded
// exchange does not verify on another session.
//
// The exchange (each line one message; the first rides in the hello, the rest in kLoginStep):
//   client-first  p=tls-exporter,,n=alice,r=<client nonce>
//   server-first  r=<nonces>,s=<salt>,i=<iterations>
//   client-final  c=<base64(gs2 header + channel binding)>,r=<nonces>,p=<ClientProof>
//   server-final  v=<ServerSignature>
// Only the PLUS mechanism with tls-exporter is spoken: a client that offers no channel
// binding ("n,," or "y,,"), another binding type or an authorization identity is refused.
//
// What an attacker learns: nothing tells an unknown name from a wrong password (both fail at
// the last step with "wrong user name or password"; an unknown name shows a salt and an
// iteration count as stable as a real user's, see UserFile::decoy_verifier).
//
// Threading: one object per login, on one thread; not thread-safe.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "auth/login.h"
#include "auth/user_file.h"

namespace testudo::auth {

// The text of every refusal that depends on the password or on whether the user exists.
inline constexpr std::string_view kWrongCredentials = "wrong user name or password";
// Largest SCRAM message either side accepts (ours are under 300 bytes).
inline constexpr std::size_t kMaxScramMessageBytes = 4096;

// The controller's half. `users` is the user file as of the login's start.
StatusOr<std::unique_ptr<LoginServer>> make_scram_login_server(std::shared_ptr<const UserFile> users,
                                                               const ChannelBinding& binding);

// The client's half: `password` is asked for once, in start(); the password is kept only until
// the salted password is computed (OpenSSL's PBKDF2, a few times faster than gsasl's own) and
// wiped then.
StatusOr<std::unique_ptr<LoginClient>> make_scram_login_client(std::string username,
                                                               std::function<StatusOr<std::string>()> password);

}  // namespace testudo::auth
