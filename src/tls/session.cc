#include "tls/session.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>

#include <cerrno>
#include <cstring>

#include "tls/tls_internal.h"

namespace testudo::tls {
namespace {

// Why an SSL_* call failed, from SSL_get_error's `code` and the thread's error queue (which
// this clears). Called right after the failing call, so errno is still the socket's.
std::string ssl_failure(int code) {
  const int saved_errno = errno;
  const unsigned long err = ERR_peek_last_error();
  std::string text;
  if (code == SSL_ERROR_ZERO_RETURN || (code == SSL_ERROR_SYSCALL && err == 0 && saved_errno == 0) ||
      (err != 0 && ERR_GET_REASON(err) == SSL_R_UNEXPECTED_EOF_WHILE_READING)) {
    text = "connection closed by peer";
  } else if (err != 0) {
    char buf[256];
    ERR_error_string_n(err, buf, sizeof buf);
    text = std::string("TLS: ") + buf;
  } else if (code == SSL_ERROR_SYSCALL) {
    text = std::strerror(saved_errno);
  } else {
    text = "TLS error " + std::to_string(code);
  }
  ERR_clear_error();
  return text;
}

// --- the sink BIO: OpenSSL's outgoing records are appended to a std::vector ---

int sink_write(BIO* bio, const char* data, int len) {
  auto* out = static_cast<std::vector<std::byte>*>(BIO_get_data(bio));
  if (out == nullptr || len < 0) return -1;
  const auto* p = reinterpret_cast<const std::byte*>(data);
  out->insert(out->end(), p, p + len);
  return len;
}
long sink_ctrl(BIO*, int cmd, long, void*) { return cmd == BIO_CTRL_FLUSH ? 1 : 0; }
int sink_create(BIO* bio) {
  BIO_set_init(bio, 1);
  return 1;
}
const BIO_METHOD* sink_method() {
  static BIO_METHOD* method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "testudo TLS sink");
    if (m != nullptr) {
      BIO_meth_set_write(m, sink_write);
      BIO_meth_set_ctrl(m, sink_ctrl);
      BIO_meth_set_create(m, sink_create);
    }
    return m;
  }();
  return method;
}

std::shared_ptr<ssl_ctx_st> share(internal::SslCtxPtr ctx) {
  return std::shared_ptr<ssl_ctx_st>(ctx.release(), internal::Deleter<SSL_CTX_free>{});
}

}  // namespace

StatusOr<Context> Context::server(const ServerOptions& options) {
  TESTUDO_ASSIGN_OR_RETURN(internal::SslCtxPtr ctx, internal::make_server_context(options));
  return Context(share(std::move(ctx)), /*server=*/true);
}

StatusOr<Context> Context::client(const ClientOptions& options) {
  TESTUDO_ASSIGN_OR_RETURN(internal::SslCtxPtr ctx, internal::make_client_context(options));
  return Context(share(std::move(ctx)), /*server=*/false);
}

StatusOr<std::unique_ptr<Session>> Session::over_socket(const Context& context, int fd, std::size_t read_buffer) {
  if (!context.ctx_) return invalid_argument("TLS session: no context");
  internal::SslPtr ssl(SSL_new(context.ctx_.get()));
  if (!ssl) return openssl_error("SSL_new");
  BIO* rbio = BIO_new_socket(fd, BIO_NOCLOSE);
  BIO* wbio = sink_method() != nullptr ? BIO_new(sink_method()) : nullptr;
  if (rbio == nullptr || wbio == nullptr) {
    BIO_free(rbio);
    BIO_free(wbio);
    return openssl_error("TLS BIO setup");
  }
  std::unique_ptr<Session> session(new Session(ssl.release()));
  BIO_set_data(wbio, &session->out_);  // the session does not move: it lives behind this pointer
  SSL_set_bio(session->ssl_, rbio, wbio);  // the SSL owns both now
  SSL_set_read_ahead(session->ssl_, 1);
  SSL_set_default_read_buffer_len(session->ssl_, read_buffer);
  if (context.server_) {
    SSL_set_accept_state(session->ssl_);
  } else {
    SSL_set_connect_state(session->ssl_);
  }
  return session;
}

Session::~Session() { SSL_free(ssl_); }

Session::Step Session::handshake() {
  Step step;
  ERR_clear_error();
  const int r = SSL_do_handshake(ssl_);
  if (r == 1) return step;
  const int code = SSL_get_error(ssl_, r);
  step.want_read = code == SSL_ERROR_WANT_READ;
  if (!step.want_read) step.failure = ssl_failure(code);
  return step;
}

Session::Step Session::read(std::byte* data, std::size_t size) {
  Step step;
  ERR_clear_error();
  const int r = SSL_read_ex(ssl_, data, size, &step.bytes);
  if (r == 1) return step;
  step.bytes = 0;
  const int code = SSL_get_error(ssl_, r);
  step.want_read = code == SSL_ERROR_WANT_READ;
  if (!step.want_read) step.failure = ssl_failure(code);
  return step;
}

Status Session::write(std::span<const std::byte> bytes) {
  ERR_clear_error();
  std::size_t written = 0;
  const int r = SSL_write_ex(ssl_, bytes.data(), bytes.size(), &written);
  // The sink takes every record at once, so a write is whole or the session is broken.
  if (r != 1 || written != bytes.size()) return unavailable(ssl_failure(SSL_get_error(ssl_, r)));
  return ok_status();
}

void Session::detach_socket() {
  if (BIO* rbio = SSL_get_rbio(ssl_)) BIO_set_fd(rbio, -1, BIO_NOCLOSE);
}

bool Session::server_not_pinned() const {
  return SSL_is_server(ssl_) == 0 && SSL_get_verify_result(ssl_) == X509_V_ERR_CERT_REJECTED;
}

StatusOr<std::array<std::byte, 32>> Session::export_keying_material(std::string_view label,
                                                                    std::string_view context) const {
  return internal::export_keying_material(ssl_, label, context);
}
StatusOr<std::string> Session::peer_fingerprint() const { return internal::peer_fingerprint(ssl_); }
StatusOr<CertificateFacts> Session::peer_certificate() const { return internal::peer_certificate_facts(ssl_); }
StatusOr<std::vector<std::string>> Session::peer_certificate_chain() const {
  return internal::peer_certificate_chain_pem(ssl_);
}

}  // namespace testudo::tls
