#include "auth/kerberos_login.h"

#include <gssapi/gssapi.h>
#include <gssapi/gssapi_ext.h>
#include <gssapi/gssapi_krb5.h>
#include <krb5/krb5.h>

#include <chrono>
#include <cstring>
#include <utility>

#include "crypto/private_file.h"

namespace testudo::auth {
namespace {

// RAII for the library's handles and buffers.
struct NameDeleter {
  void operator()(gss_name_t name) const {
    OM_uint32 minor = 0;
    gss_release_name(&minor, &name);
  }
};
using Name = std::unique_ptr<std::remove_pointer_t<gss_name_t>, NameDeleter>;

struct CredDeleter {
  void operator()(gss_cred_id_t cred) const {
    OM_uint32 minor = 0;
    gss_release_cred(&minor, &cred);
  }
};
using Cred = std::unique_ptr<std::remove_pointer_t<gss_cred_id_t>, CredDeleter>;

struct ContextDeleter {
  void operator()(gss_ctx_id_t ctx) const {
    OM_uint32 minor = 0;
    gss_delete_sec_context(&minor, &ctx, GSS_C_NO_BUFFER);
  }
};
using Context = std::unique_ptr<std::remove_pointer_t<gss_ctx_id_t>, ContextDeleter>;

// A buffer the library allocated (an output token, a displayed name).
class OwnedBuffer {
 public:
  OwnedBuffer() = default;
  ~OwnedBuffer() {
    OM_uint32 minor = 0;
    gss_release_buffer(&minor, &buf_);
  }
  OwnedBuffer(const OwnedBuffer&) = delete;
  OwnedBuffer& operator=(const OwnedBuffer&) = delete;
  gss_buffer_t get() { return &buf_; }
  std::string str() const { return buf_.length == 0 ? std::string() : std::string(static_cast<const char*>(buf_.value), buf_.length); }

 private:
  gss_buffer_desc buf_{0, nullptr};
};

gss_buffer_desc view(std::string_view s) { return gss_buffer_desc{s.size(), const_cast<char*>(s.data())}; }

// The library's own words for a status (one kind: GSS_C_GSS_CODE or GSS_C_MECH_CODE).
std::string display_status(OM_uint32 code, int type) {
  std::string out;
  OM_uint32 context = 0;
  for (int i = 0; i < 8; ++i) {
    OM_uint32 minor = 0;
    OwnedBuffer text;
    if (GSS_ERROR(gss_display_status(&minor, code, type, GSS_C_NO_OID, &context, text.get()))) break;
    if (!out.empty()) out += "; ";
    out += text.str();
    if (context == 0) break;
  }
  return out;
}

bool minor_is(OM_uint32 minor, long code) { return minor == static_cast<OM_uint32>(static_cast<krb5_error_code>(code)); }

// The library's text, for the cases without a sentence of ours: the mechanism's when it has
// one (it names the cause), else the GSS-API's.
std::string library_text(OM_uint32 major, OM_uint32 minor) {
  std::string mech = minor != 0 ? display_status(minor, GSS_C_MECH_CODE) : "";
  std::string gss = display_status(GSS_ROUTINE_ERROR(major) | GSS_CALLING_ERROR(major), GSS_C_GSS_CODE);
  if (mech.empty()) return gss;
  if (gss.empty()) return mech;
  return mech + " (" + gss + ")";
}

// A GSS-API failure as one sentence for a person. The library's texts name principals, files
// and realms, never a key or a ticket's contents, so they may be passed on.
std::string explain(OM_uint32 major, OM_uint32 minor, bool acceptor, const std::string& service) {
  const std::string fix_clock = " (check both clocks, e.g. NTP)";
  if (GSS_ROUTINE_ERROR(major) == GSS_S_BAD_BINDINGS) {
    return "the Kerberos authenticator is bound to another TLS session (channel binding mismatch: a relay or a "
           "replay)";
  }
  if (minor_is(minor, KRB5KRB_AP_ERR_SKEW) || minor_is(minor, KRB5_KDCREP_SKEW)) {
    return "clock skew too great between the client and the " + std::string(acceptor ? "controller" : "KDC") + fix_clock;
  }
  if (minor_is(minor, KRB5KRB_AP_ERR_TKT_EXPIRED) || GSS_ROUTINE_ERROR(major) == GSS_S_CREDENTIALS_EXPIRED) {
    return "the Kerberos ticket has expired (run kinit)";
  }
  if (minor_is(minor, KRB5KRB_AP_ERR_REPEAT)) return "a replayed Kerberos authenticator";
  if (acceptor) {
    if (minor_is(minor, KRB5KRB_AP_ERR_NOT_US) || minor_is(minor, KRB5KRB_AP_WRONG_PRINC) ||
        minor_is(minor, KRB5_KT_NOTFOUND)) {
      return "wrong service: the ticket is not for this controller's service principal " + service +
             " (the client's --service-principal)";
    }
    if (minor_is(minor, KRB5_KT_KVNONOTFOUND) || minor_is(minor, KRB5KRB_AP_ERR_BADKEYVER)) {
      return "the controller's keytab lacks the key version of this ticket (the service key changed at the KDC: "
             "export it into the keytab again)";
    }
    if (minor_is(minor, KRB5KRB_AP_ERR_MODIFIED) || minor_is(minor, KRB5KRB_AP_ERR_BAD_INTEGRITY)) {
      return "the ticket does not decrypt with the controller's key for " + service +
             " (a stale keytab, or a forged ticket)";
    }
    return "Kerberos: " + library_text(major, minor);
  }
  if (GSS_ROUTINE_ERROR(major) == GSS_S_NO_CRED || minor_is(minor, KRB5_FCC_NOFILE) ||
      minor_is(minor, KRB5_CC_NOTFOUND)) {
    return "no Kerberos credentials (run kinit)";
  }
  if (minor_is(minor, KRB5KDC_ERR_S_PRINCIPAL_UNKNOWN)) {
    return "wrong service: the KDC knows no service principal " + service + " (check --service-principal)";
  }
  if (minor_is(minor, KRB5_KDC_UNREACH) || minor_is(minor, KRB5_REALM_UNKNOWN) ||
      minor_is(minor, KRB5_REALM_CANT_RESOLVE)) {
    return "cannot reach a KDC for the service principal " + service + ": " + library_text(major, minor);
  }
  return "Kerberos: " + library_text(major, minor);
}

StatusOr<std::string> display_name(gss_name_t name);

StatusOr<Name> import_principal(const std::string& principal) {
  OM_uint32 minor = 0;
  gss_buffer_desc buf = view(principal);
  gss_name_t name = GSS_C_NO_NAME;
  OM_uint32 major = gss_import_name(&minor, &buf, GSS_KRB5_NT_PRINCIPAL_NAME, &name);
  if (GSS_ERROR(major)) {
    return invalid_argument("'" + principal + "' is not a Kerberos principal name: " + library_text(major, minor));
  }
  return Name(name);
}

// A principal as the Kerberos mechanism resolved it: with its realm ("testudo/h@REALM").
StatusOr<std::string> canonical_text(gss_name_t name) {
  OM_uint32 minor = 0;
  gss_name_t canonical = GSS_C_NO_NAME;
  OM_uint32 major = gss_canonicalize_name(&minor, name, gss_mech_krb5, &canonical);
  if (GSS_ERROR(major)) return invalid_argument("Kerberos: " + library_text(major, minor));
  Name owned(canonical);
  return display_name(owned.get());
}

StatusOr<std::string> display_name(gss_name_t name) {
  OM_uint32 minor = 0;
  OwnedBuffer text;
  OM_uint32 major = gss_display_name(&minor, name, text.get(), nullptr);
  if (GSS_ERROR(major)) return internal_error("Kerberos: " + library_text(major, minor));
  return text.str();
}

// RFC 9266 as GSS-API channel bindings: addresses unspecified, application data
// "tls-exporter:" + the exporter value. The struct points into `data`, so both live together
// in the login and neither moves.
struct Bindings {
  explicit Bindings(const ChannelBinding& binding) : data("tls-exporter:") {
    data.append(reinterpret_cast<const char*>(binding.data()), binding.size());
    std::memset(&gss, 0, sizeof gss);
    gss.initiator_addrtype = GSS_C_AF_UNSPEC;
    gss.acceptor_addrtype = GSS_C_AF_UNSPEC;
    gss.application_data = view(data);
  }
  Bindings(const Bindings&) = delete;
  Bindings& operator=(const Bindings&) = delete;
  std::string data;
  gss_channel_bindings_struct gss;
};

std::int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

gss_OID_set_desc krb5_only() { return gss_OID_set_desc{1, gss_mech_krb5}; }

// Messages either side takes: one AP-REQ, one AP-REP, and nothing more.
constexpr int kMaxSteps = 2;

class KerberosServer final : public LoginServer {
 public:
  KerberosServer(std::shared_ptr<const void> keep_alive, gss_cred_id_t cred, std::string service,
                 const ChannelBinding& binding)
      : keep_alive_(std::move(keep_alive)), cred_(cred), service_(std::move(service)), bindings_(binding) {}

  StatusOr<Step> step(std::string_view message) override {
    if (done_ || ++steps_ > kMaxSteps) return permission_denied("unexpected Kerberos login message");
    if (message.empty()) return permission_denied("empty Kerberos login message");
    gss_buffer_desc input = view(message);
    gss_ctx_id_t ctx = context_.release();
    gss_name_t source = GSS_C_NO_NAME;
    OwnedBuffer output;
    OM_uint32 minor = 0, flags = 0, lifetime = 0;
    const OM_uint32 major = gss_accept_sec_context(&minor, &ctx, cred_, &input, &bindings_.gss, &source, nullptr,
                                                   output.get(), &flags, &lifetime, nullptr);
    context_.reset(ctx);
    Name source_name(source);
    if (GSS_ERROR(major)) return permission_denied(explain(major, minor, true, service_));
    if (major & GSS_S_CONTINUE_NEEDED) return Step{output.str(), std::nullopt};
    // MIT accepts an initiator that sent no bindings at all; only this flag says they matched.
    if (!(flags & GSS_C_CHANNEL_BOUND_FLAG)) {
      return permission_denied("the Kerberos login was not bound to this TLS session (the client sent no channel "
                               "bindings)");
    }
    if (!(flags & GSS_C_MUTUAL_FLAG)) {
      return permission_denied("the client did not ask for Kerberos mutual authentication");
    }
    if (flags & GSS_C_ANON_FLAG) return permission_denied("anonymous Kerberos logins are not accepted");
    auto principal = display_name(source_name.get());
    if (!principal.ok()) return principal.status();
    if (principal->empty()) return permission_denied("the Kerberos ticket names no client");
    done_ = true;
    identity_ = "krb:" + *principal;
    LoginIdentity id;
    id.identity = identity_;
    // The session ends with the ticket: a client renews it (kinit) and connects again.
    id.expires_at = lifetime == GSS_C_INDEFINITE ? 0 : unix_now() + static_cast<std::int64_t>(lifetime);
    return Step{output.str(), std::move(id)};
  }

  // The client principal is inside the encrypted ticket: known only once the login succeeded.
  std::string claimed_identity() const override { return identity_; }

 private:
  std::shared_ptr<const void> keep_alive_;  // owns cred_
  gss_cred_id_t cred_;
  std::string service_;
  Bindings bindings_;
  Context context_;
  int steps_ = 0;
  bool done_ = false;
  std::string identity_;
};

class KerberosClient final : public LoginClient {
 public:
  explicit KerberosClient(std::string service) : service_(std::move(service)) {}

  LoginMethod method() const override { return LoginMethod::kKerberos; }

  StatusOr<std::string> start(const ChannelBinding& binding) override {
    if (bindings_) return failed_precondition("the Kerberos login has already started");
    TESTUDO_ASSIGN_OR_RETURN(target_, import_principal(service_));
    bindings_ = std::make_unique<Bindings>(binding);
    auto token = initiate(std::string_view());
    if (!token.ok()) return token.status();
    if (!*token) return internal_error("Kerberos: the library produced no first token");
    return std::move(**token);
  }

  StatusOr<std::optional<std::string>> step(std::string_view message) override {
    if (!bindings_ || complete_ || ++steps_ >= kMaxSteps) {
      return permission_denied("the controller sent an unexpected Kerberos login message");
    }
    return initiate(message);
  }

  Status finished() override {
    if (!complete_) {
      return permission_denied("the controller did not complete Kerberos mutual authentication (no valid AP-REP)");
    }
    return ok_status();
  }

  std::int64_t expires_at() const override { return expires_at_; }

  // A fresh AP-REQ on the same TLS session from the credential cache as it is now: after the
  // user ran kinit again (or a ticket renewer did), it carries the new ticket and the session
  // goes on; otherwise it ends no later than before. The controller verifies it like a login
  // (channel binding included) but sends no AP-REP back: the session's controller was
  // authenticated mutually at the login and is pinned by TLS since.
  StatusOr<std::string> renew() override {
    if (!complete_) return failed_precondition("the Kerberos login has not completed");
    Context fresh;
    auto token = initiate_on(fresh, std::string_view());
    if (!token.ok()) return token.status();
    if (!*token) return internal_error("Kerberos: the library produced no token");
    return std::move(**token);
  }

 private:
  // One call of gss_init_sec_context on the login's context: the token to send, or nullopt
  // when complete with none.
  StatusOr<std::optional<std::string>> initiate(std::string_view input) {
    auto token = initiate_on(context_, input);
    if (token.ok() && token_complete_) complete_ = true;
    return token;
  }

  StatusOr<std::optional<std::string>> initiate_on(Context& context, std::string_view input) {
    token_complete_ = false;
    gss_buffer_desc in = view(input);
    gss_ctx_id_t ctx = context.release();
    OwnedBuffer output;
    OM_uint32 minor = 0, flags = 0, lifetime = 0;
    gss_OID_desc* mech = gss_mech_krb5;
    const OM_uint32 major = gss_init_sec_context(
        &minor, GSS_C_NO_CREDENTIAL, &ctx, target_.get(), mech, GSS_C_MUTUAL_FLAG | GSS_C_REPLAY_FLAG, 0,
        &bindings_->gss, input.empty() ? GSS_C_NO_BUFFER : &in, nullptr, output.get(), &flags, &lifetime);
    context.reset(ctx);
    if (!GSS_ERROR(major) && input.empty() && lifetime != 0 && lifetime != GSS_C_INDEFINITE) {
      // The service ticket's end: the client link renews a little before it.
      expires_at_ = unix_now() + static_cast<std::int64_t>(lifetime);
    }
    if (GSS_ERROR(major)) {
      // A failure on the controller's reply means it did not prove itself.
      const std::string why = explain(major, minor, false, service_);
      return permission_denied(input.empty() ? why : "the controller's Kerberos reply did not verify: " + why);
    }
    if (!(major & GSS_S_CONTINUE_NEEDED)) {
      if (!(flags & GSS_C_MUTUAL_FLAG)) {
        return permission_denied("Kerberos mutual authentication was not performed");
      }
      token_complete_ = true;
    }
    std::string token = output.str();
    if (token.empty()) return std::optional<std::string>();
    return std::optional<std::string>(std::move(token));
  }

  std::string service_;
  Name target_;
  std::unique_ptr<Bindings> bindings_;
  Context context_;
  int steps_ = 0;
  bool complete_ = false;
  bool token_complete_ = false;  // the last initiate_on completed its context
  std::int64_t expires_at_ = 0;
};

// The keytab must hold a key for `principal`. Asked of the keytab itself before the GSS-API
// sees it: a clearer message, and MIT's gss_acquire_cred_from (1.20) leaks the principal it
// copied when it fails this way.
Status check_keytab_holds(const std::string& keytab_path, const std::string& principal) {
  krb5_context ctx = nullptr;
  if (krb5_error_code code = krb5_init_context(&ctx); code != 0) {
    return failed_precondition("Kerberos: cannot read the configuration (krb5.conf, KRB5_CONFIG): error " +
                               std::to_string(code));
  }
  std::unique_ptr<std::remove_pointer_t<krb5_context>, decltype(&krb5_free_context)> context(ctx, krb5_free_context);
  auto message = [ctx](krb5_error_code code) {
    const char* text = krb5_get_error_message(ctx, code);
    std::string out = text ? text : "error " + std::to_string(code);
    krb5_free_error_message(ctx, text);
    return out;
  };
  krb5_keytab kt = nullptr;
  if (krb5_error_code code = krb5_kt_resolve(ctx, ("FILE:" + keytab_path).c_str(), &kt); code != 0) {
    return failed_precondition("keytab " + keytab_path + ": " + message(code));
  }
  auto close_kt = [ctx](krb5_keytab k) { krb5_kt_close(ctx, k); };
  std::unique_ptr<std::remove_pointer_t<krb5_keytab>, decltype(close_kt)> keytab(kt, close_kt);
  krb5_principal princ = nullptr;
  if (krb5_error_code code = krb5_parse_name(ctx, principal.c_str(), &princ); code != 0) {
    return invalid_argument("service principal " + principal + ": " + message(code));
  }
  auto free_princ = [ctx](krb5_principal p) { krb5_free_principal(ctx, p); };
  std::unique_ptr<std::remove_pointer_t<krb5_principal>, decltype(free_princ)> owned(princ, free_princ);
  krb5_keytab_entry entry{};
  if (krb5_error_code code = krb5_kt_get_entry(ctx, kt, princ, 0, 0, &entry); code != 0) {
    if (code == KRB5_KT_NOTFOUND) {
      return failed_precondition("keytab " + keytab_path + " has no key for " + principal + " (export one: kadmin -q \"ktadd -k " +
                                 keytab_path + " " + principal + "\"; see docs/security.md, Kerberos)");
    }
    return failed_precondition("keytab " + keytab_path + ": " + message(code));
  }
  krb5_free_keytab_entry_contents(ctx, &entry);
  return ok_status();
}

}  // namespace

std::string default_kerberos_service(const std::string& host) { return "testudo/" + host; }

struct KerberosAcceptor::Impl {
  Cred cred;
};

KerberosAcceptor::KerberosAcceptor(std::unique_ptr<Impl> impl, std::string principal)
    : impl_(std::move(impl)), principal_(std::move(principal)) {}

KerberosAcceptor::~KerberosAcceptor() = default;

StatusOr<std::shared_ptr<KerberosAcceptor>> KerberosAcceptor::create(const std::string& keytab_path,
                                                                     const std::string& service_principal) {
  if (keytab_path.empty()) return invalid_argument("Kerberos logins need a keytab (--keytab)");
  // The keytab is the service's long-term key: a copy lets anyone pose as this controller to
  // Kerberos clients and forge tickets for it. Owner-only, like a private key.
  if (auto checked = crypto::read_private_file(keytab_path, "keytab"); !checked.ok()) return checked.status();
  TESTUDO_ASSIGN_OR_RETURN(Name name, import_principal(service_principal));
  auto canonical = canonical_text(name.get());
  if (!canonical.ok()) {
    return invalid_argument("service principal " + service_principal + ": " + canonical.status().message());
  }
  const std::string principal = std::move(canonical).value();
  TESTUDO_RETURN_IF_ERROR(check_keytab_holds(keytab_path, principal));
  // The keytab goes to the library in a credential store, not through KRB5_KTNAME: nothing
  // process-wide changes.
  gss_key_value_element_desc element{"keytab", keytab_path.c_str()};
  gss_key_value_set_desc store{1, &element};
  gss_OID_set_desc mechs = krb5_only();
  gss_cred_id_t cred = GSS_C_NO_CREDENTIAL;
  OM_uint32 minor = 0;
  OM_uint32 major = gss_acquire_cred_from(&minor, name.get(), GSS_C_INDEFINITE, &mechs, GSS_C_ACCEPT, &store, &cred,
                                          nullptr, nullptr);
  if (GSS_ERROR(major)) {
    return failed_precondition("keytab " + keytab_path + " is not usable for " + principal + ": " +
                               library_text(major, minor) + " (see docs/security.md, Kerberos)");
  }
  auto impl = std::make_unique<Impl>();
  impl->cred.reset(cred);
  return std::shared_ptr<KerberosAcceptor>(new KerberosAcceptor(std::move(impl), std::move(principal)));
}

std::unique_ptr<LoginServer> KerberosAcceptor::begin(const ChannelBinding& binding) const {
  return std::make_unique<KerberosServer>(impl_, impl_->cred.get(), principal_, binding);
}

std::unique_ptr<LoginClient> make_kerberos_login_client(std::string service_principal) {
  return std::make_unique<KerberosClient>(std::move(service_principal));
}

}  // namespace testudo::auth
