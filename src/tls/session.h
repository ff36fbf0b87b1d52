// One TLS session over a non-blocking TCP socket, for the network layer (net/) to drive: the
// handshake, reading and writing application data, and what the session knows about its peer.
// The session does not own the socket and never waits: net/ waits for readiness (asio) and
// sends the ciphertext the session produces. No OpenSSL type appears here.
//
// Why this shape: OpenSSL reads ciphertext straight from the socket into its read-ahead buffer
// (many records per recv) and decrypts into the caller's buffer, and its outgoing records
// collect in one buffer (output()) that the caller sends in large chunks — no BIO pair and no
// extra copy per 16 KiB record (what asio::ssl::stream would cost).
//
// Threading: a Session is not thread-safe; its owner serialises every call (net/'s connection
// holds a mutex around them, see net.cc). A Context is immutable and may be shared by any
// number of sessions on any threads.
#pragma once

#include <array>
#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "testudo/status.h"
#include "tls/tls.h"

struct ssl_ctx_st;  // OpenSSL's SSL_CTX, opaque here
struct ssl_st;      // OpenSSL's SSL, opaque here

namespace testudo::tls {

// One side's TLS settings made ready for sessions (see tls.h: ServerOptions, ClientOptions).
// Immutable; copies share it.
class Context {
 public:
  // Errors: kInvalidArgument for bad settings (version, suites, key and certificate that do
  // not match, a malformed pin), with the reason.
  static StatusOr<Context> server(const ServerOptions& options);
  static StatusOr<Context> client(const ClientOptions& options);

  bool is_server() const { return server_; }

 private:
  friend class Session;
  Context(std::shared_ptr<ssl_ctx_st> ctx, bool server) : ctx_(std::move(ctx)), server_(server) {}
  std::shared_ptr<ssl_ctx_st> ctx_;
  bool server_ = false;
};

class Session {
 public:
  // A session of `context`'s side (accepting or connecting) over the TCP socket `fd`, which
  // must be non-blocking and outlive the session or be detached first (detach_socket). It
  // reads up to `read_buffer` bytes of ciphertext per recv. The session keeps the context's
  // settings alive (OpenSSL counts the SSL_CTX's references).
  static StatusOr<std::unique_ptr<Session>> over_socket(const Context& context, int fd, std::size_t read_buffer);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // What one call of handshake() or read() did. After a failure the session is broken: send
  // what output() holds (often an alert telling the peer why) and close.
  struct Step {
    std::size_t bytes = 0;    // read(): plaintext bytes delivered
    bool want_read = false;   // wait until the socket is readable, then call again
    std::string failure;      // non-empty: why the session failed ("connection closed by peer"...)
    bool failed() const { return !failure.empty(); }
  };

  // Advances the handshake. Done when the step neither failed nor wants to read. Send
  // output() after every step: it holds this side's next flight.
  Step handshake();
  // Decrypts up to `size` bytes into `data`. A step with bytes == 0 either wants to read or
  // failed (a peer's close_notify or EOF fails with "connection closed by peer").
  Step read(std::byte* data, std::size_t size);
  // Encrypts `bytes` into output(). kUnavailable with the reason if the session is broken.
  Status write(std::span<const std::byte> bytes);

  // Ciphertext not yet sent: the caller writes it to the socket, then consume_output().
  std::span<const std::byte> output() const { return {out_.data() + out_sent_, out_.size() - out_sent_}; }
  bool has_output() const { return out_sent_ < out_.size(); }
  // Marks the first `n` bytes of output() as sent; once all are, the buffer is reused.
  void consume_output(std::size_t n) {
    out_sent_ += n;
    if (out_sent_ >= out_.size()) {
      out_.clear();
      out_sent_ = 0;
    }
  }
  // Frees the output buffer's memory beyond `keep` bytes when nothing waits in it (a
  // connection that moved a large message once should not hold its buffer for ever).
  void trim_output(std::size_t keep) {
    if (!has_output() && out_.capacity() > keep) std::vector<std::byte>().swap(out_);
  }

  // Stops the session from touching the socket's descriptor ever again: call before the
  // owner closes the socket, so a later call cannot read a descriptor number the kernel has
  // since handed to another connection.
  void detach_socket();

  // Client side, after a failed handshake: true if it failed because the server's certificate
  // is not the pinned one (a verdict on the server: retrying cannot help, docs/threat-model.md T3).
  bool server_not_pinned() const;

  // RFC 8446 exporter of 32 bytes for `label` and `context`: both ends of one session get the
  // same value, any other session another (the capability proof binds to it).
  // kFailedPrecondition before the handshake has finished.
  StatusOr<std::array<std::byte, 32>> export_keying_material(std::string_view label, std::string_view context) const;
  // "sha256:<hex>" of the peer's leaf certificate.
  StatusOr<std::string> peer_fingerprint() const;
  // Facts of the peer's leaf certificate; kFailedPrecondition if the peer presented none.
  StatusOr<CertificateFacts> peer_certificate() const;
  // PEM of every certificate the peer sent, leaf first, each once (for ChainVerifier).
  StatusOr<std::vector<std::string>> peer_certificate_chain() const;

 private:
  explicit Session(ssl_st* ssl) : ssl_(ssl) {}

  ssl_st* ssl_;                 // owned; freed in the destructor (it holds its SSL_CTX itself)
  std::vector<std::byte> out_;  // ciphertext, unsent from out_sent_ on (the sink BIO appends)
  std::size_t out_sent_ = 0;
};

}  // namespace testudo::tls
