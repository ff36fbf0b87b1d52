#include "auth/scram_login.h"

#include <gsasl.h>

#include <charconv>
#include <cstring>
#include <mutex>
#include <new>

#include "crypto/crypto.h"

namespace testudo::auth {
namespace {

constexpr const char* kMechanism = "SCRAM-SHA-256-PLUS";
// The only GS2 header either side accepts: channel binding required ("p"), type tls-exporter,
// no authorization identity.
constexpr std::string_view kGs2Header = "p=tls-exporter,,";

// gsasl_init also initialises the library's crypto backend; its manual does not promise that
// two threads may do so at once (the controller's loop and a Python client's threads might),
// so contexts are made and ended one at a time. Cheap: a context is a list of mechanisms.
std::mutex& gsasl_init_mutex() {
  static std::mutex mu;
  return mu;
}

struct GsaslDone {
  void operator()(Gsasl* ctx) const {
    std::lock_guard lock(gsasl_init_mutex());
    gsasl_done(ctx);
  }
};
struct GsaslFinish {
  void operator()(Gsasl_session* session) const { gsasl_finish(session); }
};
using GsaslContext = std::unique_ptr<Gsasl, GsaslDone>;
using GsaslSession = std::unique_ptr<Gsasl_session, GsaslFinish>;

// A gsasl library error (out of memory, a library too old for the mechanism): never about
// the peer or its secrets.
Status library_error(std::string_view what, int rc) {
  return internal_error("GNU SASL: " + std::string(what) + ": " + gsasl_strerror_name(rc));
}

Status malformed() { return invalid_argument("malformed SCRAM message"); }

// One gsasl context and session for `mechanism`; `client` picks the side.
StatusOr<std::pair<GsaslContext, GsaslSession>> start_session(bool client, void* hook,
                                                               Gsasl_callback_function callback) {
  Gsasl* raw_ctx = nullptr;
  {
    std::lock_guard lock(gsasl_init_mutex());
    if (int rc = gsasl_init(&raw_ctx); rc != GSASL_OK) return library_error("init", rc);
  }
  GsaslContext ctx(raw_ctx);
  if (callback != nullptr) gsasl_callback_set(ctx.get(), callback);
  Gsasl_session* raw_session = nullptr;
  const int rc = client ? gsasl_client_start(ctx.get(), kMechanism, &raw_session)
                        : gsasl_server_start(ctx.get(), kMechanism, &raw_session);
  if (rc != GSASL_OK) return library_error(std::string("starting ") + kMechanism, rc);
  GsaslSession session(raw_session);
  gsasl_session_hook_set(session.get(), hook);
  return std::pair<GsaslContext, GsaslSession>(std::move(ctx), std::move(session));
}

// One gsasl step; the output (gsasl's allocation) copied out. `rc` is gsasl's answer.
std::string run_step(Gsasl_session* session, std::string_view input, int& rc) {
  char* out = nullptr;
  std::size_t out_len = 0;
  rc = gsasl_step(session, input.data(), input.size(), &out, &out_len);
  std::string result = out != nullptr ? std::string(out, out_len) : std::string();
  gsasl_free(out);
  return result;
}

Status check_message(std::string_view message) {
  if (message.size() > kMaxScramMessageBytes) {
    return invalid_argument("SCRAM message of " + std::to_string(message.size()) + " bytes, over the limit of " +
                            std::to_string(kMaxScramMessageBytes));
  }
  if (message.find('\0') != std::string_view::npos) return malformed();
  return ok_status();
}

std::string base64_of(std::string_view s) { return crypto::to_base64(crypto::as_bytes(s)); }

// What the client's c= attribute must be on this TLS session: the GS2 header followed by the
// channel binding data (RFC 5802 section 7, cbind-input).
std::string expected_cbind(const ChannelBinding& binding) {
  std::string input(kGs2Header);
  input.append(reinterpret_cast<const char*>(binding.data()), binding.size());
  return base64_of(input);
}

class ScramServer final : public LoginServer {
 public:
  ScramServer(std::shared_ptr<const UserFile> users, const ChannelBinding& binding)
      : users_(std::move(users)), cbind_(expected_cbind(binding)),
        binding_b64_(crypto::to_base64(binding)) {}

  Status init() {
    TESTUDO_ASSIGN_OR_RETURN(auto started, start_session(/*client=*/false, this, nullptr));
    ctx_ = std::move(started.first);
    session_ = std::move(started.second);
    return set(GSASL_CB_TLS_EXPORTER, binding_b64_);
  }

  StatusOr<Step> step(std::string_view message) override {
    const Phase phase = phase_;
    // Any failure ends the exchange: the admission refuses the connection.
    phase_ = Phase::kOver;
    switch (phase) {
      case Phase::kFirst: return on_client_first(message);
      case Phase::kFinal: return on_client_final(message);
      case Phase::kOver: break;
    }
    return failed_precondition("the SCRAM exchange is over");
  }

  std::string claimed_identity() const override { return claimed_; }

 private:
  enum class Phase { kFirst, kFinal, kOver };

  Status set(Gsasl_property property, const std::string& value) {
    if (int rc = gsasl_property_set(session_.get(), property, value.c_str()); rc != GSASL_OK) {
      return library_error("setting a property", rc);
    }
    return ok_status();
  }

  static Status peer_error(int rc) {
    switch (rc) {
      case GSASL_AUTHENTICATION_ERROR:
        return permission_denied(std::string(kWrongCredentials));
      case GSASL_MECHANISM_PARSE_ERROR:
      case GSASL_BASE64_ERROR:
        return malformed();
      default:
        return library_error("SCRAM step", rc);
    }
  }

  StatusOr<Step> on_client_first(std::string_view message) {
    TESTUDO_RETURN_IF_ERROR(check_message(message));
    if (message.substr(0, kGs2Header.size()) != kGs2Header) {
      // Say which rule the client broke: none of this depends on a secret.
      if (message.starts_with("n,") || message.starts_with("y,")) {
        return permission_denied("channel binding is required: log in with SCRAM-SHA-256-PLUS (tls-exporter)");
      }
      if (message.starts_with("p=tls-exporter,")) {
        return permission_denied("an authorization identity (a=) is not supported");
      }
      if (message.starts_with("p=")) return permission_denied("only the tls-exporter channel binding is supported");
      return malformed();
    }
    // client-first-message-bare: "n=" name "," "r=" nonce [extensions]. A mandatory
    // extension ("m=") comes first and is refused as malformed, as RFC 5802 asks.
    const std::string_view bare = message.substr(kGs2Header.size());
    if (!bare.starts_with("n=")) return malformed();
    const std::size_t name_end = bare.find(',');
    if (name_end == std::string_view::npos) return malformed();
    // Names in the user file need no escaping (check_user_name), so "=2C" and "=3D" never
    // name a user: any '=' in the name is refused before gsasl decodes it.
    const std::string name(bare.substr(2, name_end - 2));
    if (!check_user_name(name).ok()) return permission_denied(std::string(kWrongCredentials));
    claimed_ = "user:" + name;

    // The decoy is derived for every name, known or not, so both take the same time.
    const UserEntry* entry = users_->find(name);
    ScramVerifier verifier = users_->decoy_verifier(name);
    if (entry != nullptr) verifier = entry->verifier;
    if (entry != nullptr) {
      known_ = true;
      disabled_ = entry->disabled;
      groups_ = entry->groups;
    }
    name_ = name;
    TESTUDO_RETURN_IF_ERROR(set(GSASL_SCRAM_ITER, std::to_string(verifier.iterations)));
    TESTUDO_RETURN_IF_ERROR(set(GSASL_SCRAM_SALT, crypto::to_base64(verifier.salt)));
    TESTUDO_RETURN_IF_ERROR(set(GSASL_SCRAM_STOREDKEY, crypto::to_base64(verifier.stored_key)));
    TESTUDO_RETURN_IF_ERROR(set(GSASL_SCRAM_SERVERKEY, crypto::to_base64(verifier.server_key)));

    int rc = GSASL_OK;
    std::string reply = run_step(session_.get(), message, rc);
    if (rc != GSASL_NEEDS_MORE) return rc == GSASL_OK ? malformed() : peer_error(rc);
    // gsasl parsed the same name we looked up (a parser disagreement would be a way round
    // the lookup).
    const char* authid = gsasl_property_fast(session_.get(), GSASL_AUTHID);
    if (authid == nullptr || name != authid) return malformed();
    phase_ = Phase::kFinal;
    return Step{std::move(reply), std::nullopt};
  }

  StatusOr<Step> on_client_final(std::string_view message) {
    TESTUDO_RETURN_IF_ERROR(check_message(message));
    // The channel binding first, to say why a login recorded on another TLS session (a replay)
    // or passed on by a relay in the middle fails. gsasl checks it again below.
    if (!message.starts_with("c=")) return malformed();
    const std::size_t cbind_end = message.find(',');
    if (cbind_end == std::string_view::npos) return malformed();
    if (message.substr(2, cbind_end - 2) != cbind_) {
      return permission_denied("channel binding mismatch: this login was made for another TLS session "
                               "(a replayed or relayed login)");
    }
    int rc = GSASL_OK;
    std::string reply = run_step(session_.get(), message, rc);
    if (rc != GSASL_OK) return rc == GSASL_NEEDS_MORE ? malformed() : peer_error(rc);
    // A decoy verifier has no password: its proof cannot match. Kept as a rule, not a hope.
    if (!known_) return permission_denied(std::string(kWrongCredentials));
    // Said only to a client that proved the password.
    if (disabled_) return permission_denied("the account " + name_ + " is disabled");
    return Step{std::move(reply), LoginIdentity{claimed_, groups_, 0}};
  }

  const std::shared_ptr<const UserFile> users_;
  const std::string cbind_;
  const std::string binding_b64_;
  GsaslContext ctx_;
  GsaslSession session_;  // after ctx_: finished before the context is done
  Phase phase_ = Phase::kFirst;
  std::string claimed_;
  std::string name_;
  bool known_ = false;
  bool disabled_ = false;
  std::vector<std::string> groups_;
};

class ScramClient final : public LoginClient {
 public:
  ScramClient(std::string username, std::function<StatusOr<std::string>()> password)
      : username_(std::move(username)), password_source_(std::move(password)) {}
  ~ScramClient() override { forget_password(); }

  LoginMethod method() const override { return LoginMethod::kPassword; }

  StatusOr<std::string> start(const ChannelBinding& binding) override {
    if (phase_ != Phase::kNew) return failed_precondition("the SCRAM login was started already");
    phase_ = Phase::kOver;
    TESTUDO_RETURN_IF_ERROR(check_user_name(username_));
    if (!password_source_) return invalid_argument("a password login needs a password");
    TESTUDO_ASSIGN_OR_RETURN(password_, password_source_());
    if (password_.empty()) return invalid_argument("the password is empty");
    TESTUDO_ASSIGN_OR_RETURN(auto started, start_session(/*client=*/true, this, &ScramClient::callback));
    ctx_ = std::move(started.first);
    session_ = std::move(started.second);
    TESTUDO_RETURN_IF_ERROR(set(GSASL_AUTHID, username_));
    TESTUDO_RETURN_IF_ERROR(set(GSASL_CB_TLS_EXPORTER, crypto::to_base64(binding)));
    int rc = GSASL_OK;
    std::string first = run_step(session_.get(), {}, rc);
    if (rc != GSASL_NEEDS_MORE) return library_error("SCRAM first step", rc);
    // gsasl picks the binding type from what it was given; only tls-exporter may go out.
    if (!first.starts_with(kGs2Header)) {
      return internal_error("GNU SASL did not choose the tls-exporter channel binding");
    }
    phase_ = Phase::kSentFirst;
    return first;
  }

  StatusOr<std::optional<std::string>> step(std::string_view message) override {
    const Phase phase = phase_;
    phase_ = Phase::kOver;
    if (message.size() > kMaxScramMessageBytes || message.find('\0') != std::string_view::npos) {
      return invalid_argument("the controller sent a malformed SCRAM message");
    }
    int rc = GSASL_OK;
    if (phase == Phase::kSentFirst) {
      // server-first: the salt and iteration count; the callback derives the salted password.
      std::string client_final = run_step(session_.get(), message, rc);
      forget_password();
      if (!callback_error_.ok()) return callback_error_;
      if (rc != GSASL_NEEDS_MORE) {
        if (rc == GSASL_MECHANISM_PARSE_ERROR || rc == GSASL_BASE64_ERROR || rc == GSASL_AUTHENTICATION_ERROR) {
          return invalid_argument("the controller sent a malformed SCRAM message");
        }
        return library_error("SCRAM second step", rc);
      }
      phase_ = Phase::kSentFinal;
      return std::optional<std::string>(std::move(client_final));
    }
    if (phase == Phase::kSentFinal) {
      // server-final: gsasl compares the server signature with the one it expects.
      std::string nothing = run_step(session_.get(), message, rc);
      if (rc == GSASL_AUTHENTICATION_ERROR) {
        return permission_denied("the controller's SCRAM server signature is wrong: it does not hold this "
                                 "user's verifier");
      }
      if (rc != GSASL_OK) return invalid_argument("the controller sent a malformed SCRAM message");
      phase_ = Phase::kDone;
      return std::optional<std::string>();
    }
    return failed_precondition("the SCRAM exchange is over");
  }

  Status finished() override {
    if (phase_ == Phase::kDone) return ok_status();
    return permission_denied("the controller did not complete the SCRAM exchange (no server signature)");
  }

 private:
  enum class Phase { kNew, kSentFirst, kSentFinal, kDone, kOver };

  Status set(Gsasl_property property, const std::string& value) {
    if (int rc = gsasl_property_set(session_.get(), property, value.c_str()); rc != GSASL_OK) {
      return library_error("setting a property", rc);
    }
    return ok_status();
  }

  // gsasl asks for the salted password once it has the server's salt and iteration count
  // (both set as properties); anything else it asks for is not given (the password itself
  // never goes to gsasl).
  static int callback(Gsasl* /*ctx*/, Gsasl_session* session, Gsasl_property property) noexcept {
    auto* self = static_cast<ScramClient*>(gsasl_session_hook_get(session));
    if (self == nullptr || property != GSASL_SCRAM_SALTED_PASSWORD) return GSASL_NO_CALLBACK;
    try {
      self->callback_error_ = self->provide_salted_password(session);
      return self->callback_error_.ok() ? GSASL_OK : GSASL_NO_CALLBACK;
    } catch (const std::bad_alloc&) {
      return GSASL_MALLOC_ERROR;
    }
  }

  Status provide_salted_password(Gsasl_session* session) {
    const char* iter_text = gsasl_property_fast(session, GSASL_SCRAM_ITER);
    const char* salt_text = gsasl_property_fast(session, GSASL_SCRAM_SALT);
    if (iter_text == nullptr || salt_text == nullptr) return invalid_argument("the controller sent no salt");
    std::uint64_t iterations = 0;
    const std::string_view it(iter_text);
    auto [end, ec] = std::from_chars(it.data(), it.data() + it.size(), iterations);
    // A controller asking for more rounds than any user file allows would burn the client's
    // CPU; fewer than RFC 7677's minimum would weaken what an eavesdropper on the controller's
    // side of TLS could guess offline.
    if (ec != std::errc() || end != it.data() + it.size() || iterations < kMinScramIterations ||
        iterations > kMaxScramIterations) {
      return permission_denied("the controller asked for " + std::string(it.substr(0, 20)) +
                               " PBKDF2 iterations, outside " + std::to_string(kMinScramIterations) + ".." +
                               std::to_string(kMaxScramIterations));
    }
    auto salt = crypto::from_base64(salt_text);
    if (!salt.ok() || salt->empty() || salt->size() > 64) {
      return invalid_argument("the controller sent a malformed salt");
    }
    auto salted = scram_salted_password(password_, *salt, static_cast<std::uint32_t>(iterations));
    forget_password();
    if (!salted.ok()) return salted.status();
    std::string hex = crypto::to_hex(*salted);
    crypto::wipe(std::as_writable_bytes(std::span(*salted)));
    const int rc = gsasl_property_set(session, GSASL_SCRAM_SALTED_PASSWORD, hex.c_str());
    crypto::wipe(hex);
    if (rc != GSASL_OK) return library_error("setting the salted password", rc);
    return ok_status();
  }

  void forget_password() {
    crypto::wipe(password_);
    // The salted password is as good as the password for this salt: gsasl's copy is wiped
    // as soon as it has served (the client proof and expected server signature are made).
    if (session_) {
      if (const char* salted = gsasl_property_fast(session_.get(), GSASL_SCRAM_SALTED_PASSWORD)) {
        char* writable = const_cast<char*>(salted);
        crypto::wipe(std::as_writable_bytes(std::span(writable, std::strlen(writable))));
        gsasl_property_free(session_.get(), GSASL_SCRAM_SALTED_PASSWORD);
      }
    }
  }

  const std::string username_;
  std::function<StatusOr<std::string>()> password_source_;
  std::string password_;  // from start() until the salted password is made
  Status callback_error_;
  GsaslContext ctx_;
  GsaslSession session_;
  Phase phase_ = Phase::kNew;
};

}  // namespace

StatusOr<std::unique_ptr<LoginServer>> make_scram_login_server(std::shared_ptr<const UserFile> users,
                                                               const ChannelBinding& binding) {
  if (!users) return internal_error("no user file");
  auto server = std::make_unique<ScramServer>(std::move(users), binding);
  TESTUDO_RETURN_IF_ERROR(server->init());
  return std::unique_ptr<LoginServer>(std::move(server));
}

StatusOr<std::unique_ptr<LoginClient>> make_scram_login_client(std::string username,
                                                               std::function<StatusOr<std::string>()> password) {
  TESTUDO_RETURN_IF_ERROR(check_user_name(username));
  if (!password) return invalid_argument("a password login needs a password source");
  return std::unique_ptr<LoginClient>(std::make_unique<ScramClient>(std::move(username), std::move(password)));
}

}  // namespace testudo::auth
