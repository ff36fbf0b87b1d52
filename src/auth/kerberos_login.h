// Kerberos logins: GSS-API with MIT Kerberos, called directly (docs/security.md, "Kerberos").
//
// One round trip: the client's AP-REQ (in the hello) and the controller's AP-REP (one
// kLoginStep). What must hold:
//   * channel binding: both sides pass RFC 9266 bindings, application data
//     "tls-exporter:" + the session's 32-byte exporter value, so the authenticator inside a
//     ticket is bound to this TLS session. MIT's acceptor refuses mismatching bindings but
//     accepts an initiator that sent none; the acceptor here therefore also requires
//     GSS_C_CHANNEL_BOUND_FLAG (MIT krb5 1.19 and later set it when the bindings matched);
//   * mutual authentication: the client asks for it and verifies the controller's AP-REP, so
//     a controller without the service key cannot complete the login (finished() fails);
//   * replay detection on (the acceptor's replay cache);
//   * the identity is "krb:" + the client principal as GSS displays it ("alice@EXAMPLE.ORG");
//     no groups. The session ends when the ticket does (LoginIdentity::expires_at), unless
//     the client renews it on the connection with a fresh AP-REQ (LoginClient::renew) after
//     the user ran kinit again.
// No GSS-API type appears here: the library stays inside kerberos_login.cc.
#pragma once

#include <memory>
#include <string>

#include "auth/login.h"
#include "testudo/status.h"

namespace testudo::auth {

// The service principal a controller at `host` has when none is configured, on both sides:
// "testudo/<host>" in the default realm of the krb5.conf in use. `host` is the address the
// controller writes into its connection files (controller/location.h), so a client that
// reads the file asks for the principal the controller accepts with.
std::string default_kerberos_service(const std::string& host);

// The controller's acceptor credential: the service principal's key from a keytab. Created
// once at controller start; each login gets a LoginServer from it. The keytab is re-read by
// the library at each login, so a rotated key takes effect without a restart.
// Thread-safe (the GSS credential is only read after creation).
class KerberosAcceptor {
 public:
  // Refuses a keytab that is not a regular file owned by this user with no group/other
  // access (it holds the service key: whoever reads it can pose as the controller to every
  // Kerberos client), and one without a key for `service_principal` ("testudo/host",
  // "testudo/host@REALM"; without a realm, the default realm's).
  static StatusOr<std::shared_ptr<KerberosAcceptor>> create(const std::string& keytab_path,
                                                            const std::string& service_principal);
  ~KerberosAcceptor();
  KerberosAcceptor(const KerberosAcceptor&) = delete;
  KerberosAcceptor& operator=(const KerberosAcceptor&) = delete;

  // One login on the TLS session whose channel binding is `binding`.
  std::unique_ptr<LoginServer> begin(const ChannelBinding& binding) const;
  // The principal as the library resolved it ("testudo/host@REALM").
  const std::string& principal() const { return principal_; }

 private:
  struct Impl;
  explicit KerberosAcceptor(std::unique_ptr<Impl> impl, std::string principal);
  std::shared_ptr<Impl> impl_;
  std::string principal_;
};

// The client's half: the default credential cache (KRB5CCNAME honoured, kinit beforehand),
// target `service_principal` (as for KerberosAcceptor::create). Nothing is read until start().
std::unique_ptr<LoginClient> make_kerberos_login_client(std::string service_principal);

}  // namespace testudo::auth
