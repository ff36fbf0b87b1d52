// Attacks on a real local cluster over real sockets (docs/threat-model.md T1 T2 T3 T4 T5 T7
// T12 T13 T16 T17).
// Each test starts controller + engine processes of the testudo binary (TestCluster), plays
// the attacker with raw TLS (a tls::Session on a plain socket), plain TCP, a hostile net::Listener or
// a recording TCP relay, asserts exactly what the attacker sees, and then checks that the
// controller is alive and still serves a legitimate client.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <functional>
#include <future>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "auth/capability.h"
#include "auth/connection_file.h"
#include "auth/identity.h"
#include "auth/login.h"
#include "auth/scram_login.h"
#include "auth/user_file.h"
#include "base/test_temp_dir.h"
#include "crypto/crypto.h"
#include "net/net.h"
#include "test_cluster.h"
#include "tls/session.h"
#include "tls/tls.h"
#include "wire/message.h"

namespace testudo::testing {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using wire::MessageKind;
using wire::Role;

// Writing to a socket the controller has closed must fail with EPIPE, not kill the test.
[[maybe_unused]] const bool kSigpipeIgnored = [] {
  ::signal(SIGPIPE, SIG_IGN);
  return true;
}();

bool contains(std::string_view haystack, std::string_view needle) {
  return haystack.find(needle) != std::string_view::npos;
}


auth::Capability random_capability() {
  auto s = crypto::random_secret();
  EXPECT_TRUE(s.ok());
  return s.ok() ? *s : auth::Capability{};
}

std::string random_bytes(std::size_t n) {
  std::string out(n, '\0');
  EXPECT_TRUE(crypto::fill_random(std::as_writable_bytes(std::span(out.data(), out.size()))).ok());
  return out;
}

auth::ConnectionInfo load_info(const std::string& path, Role role) {
  auto info = auth::load_connection_file(path, role);
  EXPECT_TRUE(info.ok()) << info.status().to_string();
  return info.ok() ? *info : auth::ConnectionInfo{};
}

// The controller log line of a rejection: "WARN  audit: rejected <addr> (<who>): <reason>".
// Waits for a line that contains every one of `parts`.
bool audit_logged(const TestCluster& cluster, const std::vector<std::string>& parts,
                  std::chrono::milliseconds timeout = 5s) {
  return wait_until(
      [&] {
        std::istringstream log(read_file(cluster.controller_log()));
        for (std::string line; std::getline(log, line);) {
          if (!contains(line, "WARN") || !contains(line, "audit: rejected ")) continue;
          if (std::all_of(parts.begin(), parts.end(), [&](const std::string& p) { return contains(line, p); })) {
            return true;
          }
        }
        return false;
      },
      timeout);
}

std::vector<EngineId> sorted(std::vector<EngineId> ids) {
  std::sort(ids.begin(), ids.end());
  return ids;
}

std::vector<EngineId> engine_ids_of(TestCluster& cluster) {
  auto client = cluster.client();
  if (!client) return {};
  auto ids = client->engine_ids();
  EXPECT_TRUE(ids.ok()) << ids.status().to_string();
  return ids.ok() ? sorted(*ids) : std::vector<EngineId>{};
}

// A client that was connected all along still runs code on `ids` (an attack on another
// connection did not reach it).
void expect_client_still_served(Client& client, const std::vector<EngineId>& ids) {
  auto r = client.execute(ids, "still_served = 1").get(20s);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  for (const auto& x : *r) EXPECT_TRUE(x.status.ok()) << x.status.to_string();
}

// The controller process is alive, a fresh client connects, sees exactly `expected` engines,
// and runs execute + pull_repr on all of them.
void expect_cluster_serves(TestCluster& cluster, const std::vector<EngineId>& expected) {
  EXPECT_TRUE(launch::process_alive(cluster.processes().controller)) << "the controller process died";
  auto client = cluster.client();
  ASSERT_TRUE(client) << "a legitimate client could not connect";
  auto ids = client->engine_ids();
  ASSERT_TRUE(ids.ok()) << ids.status().to_string();
  EXPECT_EQ(sorted(*ids), sorted(expected)) << "the set of registered engines changed";
  auto executed = client->execute(*ids, "probe_value = 6 * 7").get(20s);
  ASSERT_TRUE(executed.ok()) << executed.status().to_string();
  for (const auto& r : *executed) EXPECT_TRUE(r.status.ok()) << "engine " << r.engine_id << ": " << r.status.to_string();
  auto pulled = client->pull_repr(*ids, {"probe_value"}).get(20s);
  ASSERT_TRUE(pulled.ok()) << pulled.status().to_string();
  ASSERT_EQ(pulled->size(), ids->size());
  for (const auto& r : *pulled) {
    EXPECT_TRUE(r.status.ok()) << "engine " << r.engine_id << ": " << r.status.to_string();
    ASSERT_EQ(r.value.size(), 1u);
    EXPECT_EQ(r.value[0].to_string(), "42");
  }
}

// `name` is not defined on any of `targets` (an attacker's code never ran there).
void expect_undefined_on(TestCluster& cluster, const std::vector<EngineId>& targets, const std::string& name) {
  auto client = cluster.client();
  ASSERT_TRUE(client);
  auto pulled = client->pull_repr(targets, {name}).get(20s);
  ASSERT_TRUE(pulled.ok()) << pulled.status().to_string();
  for (const auto& r : *pulled) {
    EXPECT_EQ(r.status.code(), StatusCode::kAborted) << "engine " << r.engine_id << " has '" << name
                                                      << "': " << (r.value.empty() ? "" : r.value[0].to_string());
    ASSERT_TRUE(r.remote_error.has_value()) << r.status.to_string();
    EXPECT_EQ(r.remote_error->ename, "NameError") << r.remote_error->evalue;
  }
}

// ---------------- a raw TLS peer: tls::Session on a plain socket, byte-level control ----------------

int tcp_connect(std::uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

std::string local_address_of(int fd) {
  sockaddr_in addr{};
  socklen_t len = sizeof addr;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return "?";
  char buf[INET_ADDRSTRLEN];
  ::inet_ntop(AF_INET, &addr.sin_addr, buf, sizeof buf);
  return std::string(buf) + ":" + std::to_string(ntohs(addr.sin_port));
}

// Waits for `events` on `fd` until `deadline`; false on timeout.
bool wait_fd(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return false;
    pollfd p{fd, events, 0};
    int r = ::poll(&p, 1, static_cast<int>(left));
    if (r > 0) return true;
    if (r < 0 && errno != EINTR) return true;  // let the caller's I/O report the error
  }
}

// Drains everything readable from a plain TCP socket; true once the peer closed it (EOF or
// reset) before `timeout`.
bool tcp_closed_within(int fd, std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  char buf[4096];
  for (;;) {
    if (!wait_fd(fd, POLLIN, deadline)) return false;
    ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n == 0) return true;
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return true;
  }
}

// Plain TCP connections to `port` that never send a byte; closed on destruction.
class IdleConnections {
 public:
  IdleConnections(std::uint16_t port, int n) {
    for (int i = 0; i < n; ++i) {
      int fd = tcp_connect(port);
      if (fd < 0) break;
      fds_.push_back(fd);
    }
  }
  ~IdleConnections() { close_all(); }
  std::size_t size() const { return fds_.size(); }
  void close_all() {
    for (int fd : fds_) ::close(fd);
    fds_.clear();
  }

 private:
  std::vector<int> fds_;
};

class TlsPeer {
 public:
  // Connects to 127.0.0.1:port and completes a TLS 1.3 handshake, pinning `fingerprint`,
  // presenting `identity` (default: a fresh self-signed certificate nobody trusts).
  static StatusOr<std::unique_ptr<TlsPeer>> connect(std::uint16_t port, const std::string& fingerprint,
                                                    std::optional<tls::KeyAndCertificate> given = std::nullopt) {
    auto peer = std::unique_ptr<TlsPeer>(new TlsPeer());
    auto identity = given ? StatusOr<tls::KeyAndCertificate>(*given) : tls::generate_self_signed("testudo-attacker");
    if (!identity.ok()) return identity.status();
    auto context = tls::Context::client({*identity, fingerprint});
    if (!context.ok()) return context.status();
    peer->fd_ = tcp_connect(port);
    if (peer->fd_ < 0) return unavailable("cannot connect to port " + std::to_string(port));
    ::fcntl(peer->fd_, F_SETFL, ::fcntl(peer->fd_, F_GETFL) | O_NONBLOCK);
    TESTUDO_ASSIGN_OR_RETURN(peer->session_, tls::Session::over_socket(*context, peer->fd_, 64 * 1024));
    auto deadline = Clock::now() + 5s;
    for (;;) {
      tls::Session::Step step = peer->session_->handshake();
      TESTUDO_RETURN_IF_ERROR(peer->flush(deadline));
      if (step.failed()) return unavailable("TLS handshake: " + step.failure);
      if (!step.want_read) break;
      if (!wait_fd(peer->fd_, POLLIN, deadline)) return deadline_exceeded("TLS handshake timed out");
    }
    return peer;
  }

  ~TlsPeer() {
    session_.reset();
    if (fd_ >= 0) ::close(fd_);
  }

  // "127.0.0.1:<port>" as the controller sees (and logs) this peer.
  std::string local_address() const { return local_address_of(fd_); }

  Status send_bytes(std::string_view bytes) {
    TESTUDO_RETURN_IF_ERROR(session_->write(std::as_bytes(std::span(bytes.data(), bytes.size()))));
    return flush(Clock::now() + 5s);
  }

  // One message as the protocol frames it: a head frame, then the segments in data frames.
  static std::string frame(const wire::Envelope& envelope, const std::vector<SharedBytes>& segments = {}) {
    std::string out;
    auto append = [&out](std::span<const std::byte> b) { out.append(reinterpret_cast<const char*>(b.data()), b.size()); };
    std::vector<std::byte> head = wire::encode_head(envelope, segments);
    append(wire::encode_frame_header({wire::FrameType::kHead, static_cast<std::uint32_t>(head.size())}));
    append(head);
    for (const SharedBytes& s : segments) {
      append(wire::encode_frame_header({wire::FrameType::kData, static_cast<std::uint32_t>(s.size())}));
      append(s.span());
    }
    return out;
  }

  Status send(const wire::Envelope& envelope, const std::vector<SharedBytes>& segments = {}) {
    return send_bytes(frame(envelope, segments));
  }

  // The framed bytes of a hello for `role` whose proof uses `capability` over this
  // session's exporter.
  StatusOr<std::string> hello_bytes(Role role, const auth::Capability& capability) {
    auto exporter = session_->export_keying_material(auth::kExporterLabel, wire::role_name(role));
    if (!exporter.ok()) return exporter.status();
    const auth::Capability nonce = random_capability();
    auth::Hello h{role, crypto::to_hex(std::span(nonce).first(8)), auth::capability_proof(capability, role, *exporter)};
    wire::Envelope e;
    e.kind = MessageKind::kHello;
    e.text = auth::encode_hello(h);
    return frame(e);
  }

  // This session's RFC 9266 channel binding, as a login binds to it.
  StatusOr<auth::ChannelBinding> channel_binding() const {
    return session_->export_keying_material(auth::kChannelBindingLabel, "");
  }

  // A client hello with a valid capability proof for this session that starts a login.
  Status login_hello(const auth::Capability& capability, auth::LoginMethod method, std::string first_message) {
    auto exporter = session_->export_keying_material(auth::kExporterLabel, wire::role_name(Role::kClient));
    if (!exporter.ok()) return exporter.status();
    auth::Hello h{Role::kClient, "login-test", auth::capability_proof(capability, Role::kClient, *exporter)};
    h.login = method;
    h.login_message = std::move(first_message);
    wire::Envelope e;
    e.kind = MessageKind::kHello;
    e.text = auth::encode_hello(h);
    return send(e);
  }

  Status login_step(std::string message) {
    wire::Envelope e;
    e.kind = MessageKind::kLoginStep;
    e.text = std::move(message);
    return send(e);
  }

  // The text of the next message, which must be a kLoginStep.
  StatusOr<std::string> read_login_step() {
    TESTUDO_ASSIGN_OR_RETURN(wire::Message m, read_message(5s));
    if (m.envelope.kind != MessageKind::kLoginStep) {
      return data_loss(std::string("expected a login step, got '") + std::string(wire::kind_name(m.envelope.kind)) +
                       "': " + m.envelope.text);
    }
    return m.envelope.text;
  }

  Status hello(Role role, const auth::Capability& capability) {
    auto bytes = hello_bytes(role, capability);
    if (!bytes.ok()) return bytes.status();
    return send_bytes(*bytes);
  }

  // The next message from the controller. kUnavailable once the connection is closed,
  // kDeadlineExceeded if nothing complete arrived in time.
  StatusOr<wire::Message> read_message(std::chrono::milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    wire::Limits limits;
    std::array<std::byte, wire::kFrameHeaderBytes> fh;
    TESTUDO_RETURN_IF_ERROR(read_exact(fh.data(), fh.size(), deadline));
    TESTUDO_ASSIGN_OR_RETURN(wire::FrameHeader header, wire::decode_frame_header(fh, limits));
    if (header.type != wire::FrameType::kHead) return data_loss("data frame where a head was expected");
    std::vector<std::byte> head(header.length);
    TESTUDO_RETURN_IF_ERROR(read_exact(head.data(), head.size(), deadline));
    TESTUDO_ASSIGN_OR_RETURN(wire::Head decoded, wire::decode_head(head, limits));
    wire::Message m;
    m.envelope = decoded.envelope;
    for (std::uint64_t size : decoded.segment_sizes) {
      SharedBytes seg = SharedBytes::allocate(size);
      std::uint64_t filled = 0;
      while (filled < size) {
        TESTUDO_RETURN_IF_ERROR(read_exact(fh.data(), fh.size(), deadline));
        TESTUDO_ASSIGN_OR_RETURN(wire::FrameHeader dh, wire::decode_frame_header(fh, limits));
        if (dh.type != wire::FrameType::kData || dh.length > size - filled) return data_loss("bad data frame");
        TESTUDO_RETURN_IF_ERROR(read_exact(seg.data() + filled, dh.length, deadline));
        filled += dh.length;
      }
      m.segments.push_back(std::move(seg));
    }
    return m;
  }

  // Reads until the controller closes the connection; true if it did within `timeout`.
  // Messages read meanwhile are kept in received().
  bool closed_within(std::chrono::milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    for (;;) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (left <= 0ms) return false;
      auto m = read_message(left);
      if (m.ok()) {
        received_.push_back(std::move(m).value());
        continue;
      }
      return m.status().code() == StatusCode::kUnavailable;
    }
  }
  const std::vector<wire::Message>& received() const { return received_; }

 private:
  TlsPeer() = default;

  // Sends what the session has to send (records, alerts), waiting on a full socket buffer.
  Status flush(Clock::time_point deadline) {
    while (session_->has_output()) {
      const std::span<const std::byte> out = session_->output();
      const ssize_t n = ::send(fd_, out.data(), out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        session_->consume_output(static_cast<std::size_t>(n));
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && wait_fd(fd_, POLLOUT, deadline)) continue;
      return unavailable(n < 0 && errno != EAGAIN ? std::string("TLS write failed: ") + std::strerror(errno)
                                                  : std::string("TLS write timed out"));
    }
    return ok_status();
  }

  Status read_exact(void* out, std::size_t size, Clock::time_point deadline) {
    auto* p = static_cast<std::byte*>(out);
    while (size > 0) {
      tls::Session::Step step = session_->read(p, std::min<std::size_t>(size, 1 << 20));
      (void)flush(deadline);  // e.g. a key update or an alert
      if (step.bytes > 0) {
        p += step.bytes;
        size -= step.bytes;
        continue;
      }
      if (step.failed()) return unavailable("closed: " + step.failure);
      if (!wait_fd(fd_, POLLIN, deadline)) return deadline_exceeded("nothing from the controller in time");
    }
    return ok_status();
  }

  int fd_ = -1;
  std::unique_ptr<tls::Session> session_;
  std::vector<wire::Message> received_;
};

// A raw TLS peer presenting an identity the controller trusts for `role` (the owner's client
// key or the shared engine key), so that attacks get past the trust check and reach the
// layer they aim at. (identity_test.cc attacks the trust check itself.)
std::unique_ptr<TlsPeer> tls_peer(const TestCluster& cluster, Role role = Role::kClient) {
  auto info = load_info(cluster.paths().client_connection_file, Role::kClient);
  auto identity = role == Role::kEngine ? auth::load_identity(cluster.paths().security_dir, "engine")
                                        : auth::load_identity(cluster.home() + "/identity", "client");
  EXPECT_TRUE(identity.ok()) << identity.status().to_string();
  if (!identity.ok()) return nullptr;
  auto peer = TlsPeer::connect(info.port, info.fingerprint, *identity);
  EXPECT_TRUE(peer.ok()) << peer.status().to_string();
  return peer.ok() ? std::move(peer).value() : nullptr;
}

// The attacker reads one kRejected whose text contains `reason`, and then the connection
// closes. Returns the reason the controller gave.
std::string expect_rejected_and_closed(TlsPeer& peer, const std::string& reason) {
  auto m = peer.read_message(5s);
  EXPECT_TRUE(m.ok()) << "no answer from the controller: " << m.status().to_string();
  if (!m.ok()) return "";
  EXPECT_EQ(m->envelope.kind, MessageKind::kRejected) << "got '" << wire::kind_name(m->envelope.kind) << "'";
  EXPECT_TRUE(contains(m->envelope.text, reason)) << m->envelope.text;
  EXPECT_TRUE(m->segments.empty());
  EXPECT_TRUE(peer.closed_within(3s)) << "the controller kept the rejected connection open";
  EXPECT_TRUE(peer.received().empty()) << "more messages after kRejected";
  return m->envelope.text;
}

// A fresh hello with the right capability gets a kWelcome; returns the assigned id.
std::uint32_t expect_welcome(TlsPeer& peer, Role role, const auth::Capability& capability) {
  EXPECT_TRUE(peer.hello(role, capability).ok());
  auto m = peer.read_message(5s);
  EXPECT_TRUE(m.ok()) << m.status().to_string();
  if (!m.ok()) return 0;
  EXPECT_EQ(m->envelope.kind, MessageKind::kWelcome) << m->envelope.text;
  return role == Role::kEngine ? m->envelope.engine_id : m->envelope.client_id;
}

SharedBytes text_segment(std::string_view text) { return SharedBytes::copy_of(text); }

// The DER SubjectPublicKeyInfo of the cluster owner's client certificate.
std::string client_public_key_der(const TestCluster& cluster) {
  std::string pem = read_file(cluster.home() + "/identity/client-cert.pem");
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  X509* cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  if (cert == nullptr) return "";
  unsigned char* der = nullptr;
  int n = i2d_PUBKEY(X509_get0_pubkey(cert), &der);
  std::string out = n > 0 ? std::string(reinterpret_cast<char*>(der), static_cast<std::size_t>(n)) : "";
  OPENSSL_free(der);
  X509_free(cert);
  return out;
}

// ---------------- T5: replayed login ----------------

// A hello recorded from a successful login (its plaintext, which is more than an eavesdropper
// gets) is worthless on any other TLS session: the proof is bound to the session's exporter.
TEST(SecurityTest, T5_ReplayedHelloIsRejected) {
  auto cluster = TestCluster::start(1);
  ASSERT_TRUE(cluster);
  auto info = load_info(cluster->paths().client_connection_file, Role::kClient);
  auto victim = tls_peer(*cluster);
  ASSERT_TRUE(victim);
  auto recorded = victim->hello_bytes(Role::kClient, info.capability);
  ASSERT_TRUE(recorded.ok());
  ASSERT_TRUE(victim->send_bytes(*recorded).ok());
  auto welcome = victim->read_message(5s);
  ASSERT_TRUE(welcome.ok()) << welcome.status().to_string();
  ASSERT_EQ(welcome->envelope.kind, MessageKind::kWelcome);

  auto attacker = tls_peer(*cluster);
  ASSERT_TRUE(attacker);
  ASSERT_TRUE(attacker->send_bytes(*recorded).ok());
  expect_rejected_and_closed(*attacker, "capability proof failed for role client");
  EXPECT_TRUE(audit_logged(*cluster, {"rejected " + attacker->local_address(), "capability proof failed"}));
  expect_cluster_serves(*cluster, {0});
}

// A password login recorded in full (its plaintext, more than an eavesdropper of TLS gets) is
// worthless on another TLS session: SCRAM-SHA-256-PLUS binds the proof to the session's
// tls-exporter value, and the controller's fresh nonce makes the recorded proof stale anyway.
// The relay variant: an attacker between a user's client and the controller, with a TLS session
// to each (it would need the controller's key to be invisible, but the login must not rely on
// that), passes each SCRAM message on: the proof the client makes covers the attacker's
// session, not the one the controller sees, and is refused.
TEST(SecurityTest, T5_RecordedPasswordLoginIsRefusedOnAnotherSession) {
  TempDir files;
  const std::string users_path = files.path() + "/users.json";
  {
    auto users = auth::UserFile::create();
    ASSERT_TRUE(users.ok());
    auto verifier = auth::make_scram_verifier("alice-pw-for-T5", auth::kMinScramIterations);
    ASSERT_TRUE(verifier.ok());
    ASSERT_TRUE(users->set("alice", auth::UserEntry{*verifier, {}, false}).ok());
    ASSERT_TRUE(users->save(users_path).ok());
  }
  auto cluster = TestCluster::start(1, {"--users", users_path});
  ASSERT_TRUE(cluster);
  auto info = load_info(cluster->paths().client_connection_file, Role::kClient);
  auto password = [] { return StatusOr<std::string>(std::string("alice-pw-for-T5")); };

  // The victim logs in; every message is recorded.
  auto victim = TlsPeer::connect(info.port, info.fingerprint);
  ASSERT_TRUE(victim.ok()) << victim.status().to_string();
  auto scram = auth::make_scram_login_client("alice", password);
  ASSERT_TRUE(scram.ok());
  auto binding = (*victim)->channel_binding();
  ASSERT_TRUE(binding.ok());
  auto client_first = (*scram)->start(*binding);
  ASSERT_TRUE(client_first.ok());
  ASSERT_TRUE((*victim)->login_hello(info.capability, auth::LoginMethod::kPassword, *client_first).ok());
  auto server_first = (*victim)->read_login_step();
  ASSERT_TRUE(server_first.ok()) << server_first.status().to_string();
  auto client_final = (*scram)->step(*server_first);
  ASSERT_TRUE(client_final.ok() && client_final->has_value());
  ASSERT_TRUE((*victim)->login_step(**client_final).ok());
  auto server_final = (*victim)->read_login_step();
  ASSERT_TRUE(server_final.ok()) << server_final.status().to_string();
  ASSERT_TRUE((*scram)->step(*server_final).ok());
  auto welcome = (*victim)->read_message(5s);
  ASSERT_TRUE(welcome.ok());
  ASSERT_EQ(welcome->envelope.kind, MessageKind::kWelcome) << welcome->envelope.text;
  ASSERT_TRUE((*scram)->finished().ok());

  // Replay: the recorded messages on a new session (with a valid capability proof for it).
  auto replay = TlsPeer::connect(info.port, info.fingerprint);
  ASSERT_TRUE(replay.ok());
  ASSERT_TRUE((*replay)->login_hello(info.capability, auth::LoginMethod::kPassword, *client_first).ok());
  auto fresh_first = (*replay)->read_login_step();
  ASSERT_TRUE(fresh_first.ok()) << fresh_first.status().to_string();
  EXPECT_NE(*fresh_first, *server_first);  // a fresh server nonce
  ASSERT_TRUE((*replay)->login_step(**client_final).ok());
  expect_rejected_and_closed(**replay, "channel binding mismatch");
  EXPECT_TRUE(audit_logged(*cluster, {"rejected " + (*replay)->local_address(), "channel binding mismatch"}));

  // Relay: the user's client runs its login on its session with the attacker; the attacker
  // passes the messages on over its own session with the controller.
  auto to_attacker = TlsPeer::connect(info.port, info.fingerprint);  // stands for the user's session
  auto attacker = TlsPeer::connect(info.port, info.fingerprint);
  ASSERT_TRUE(to_attacker.ok() && attacker.ok());
  auto relayed = auth::make_scram_login_client("alice", password);
  ASSERT_TRUE(relayed.ok());
  auto users_binding = (*to_attacker)->channel_binding();
  ASSERT_TRUE(users_binding.ok());
  auto first = (*relayed)->start(*users_binding);
  ASSERT_TRUE(first.ok());
  ASSERT_TRUE((*attacker)->login_hello(info.capability, auth::LoginMethod::kPassword, *first).ok());
  auto challenge = (*attacker)->read_login_step();
  ASSERT_TRUE(challenge.ok());
  auto answer = (*relayed)->step(*challenge);
  ASSERT_TRUE(answer.ok() && answer->has_value());
  ASSERT_TRUE((*attacker)->login_step(**answer).ok());
  expect_rejected_and_closed(**attacker, "channel binding mismatch");

  // Neither attempt let the password show, and the controller still serves alice's own
  // sessions and its owner.
  for (const std::string& file : {cluster->controller_log(), cluster->paths().log_dir + "/audit.jsonl"}) {
    EXPECT_FALSE(contains(read_file(file), "alice-pw-for-T5")) << file;
  }
  EXPECT_TRUE(contains(read_file(cluster->paths().log_dir + "/audit.jsonl"), "\"identity\":\"user:alice\""));
  expect_cluster_serves(*cluster, {0});
}

// ---------------- T13: secrets in argv, environment, logs ----------------

// After real work and a rejected attempt, neither capability (hex or raw) appears in any log,
// nor in the command line or environment of any cluster process.
TEST(SecurityTest, T13_CapabilitiesNeverInLogsArgvOrEnvironment) {
  auto cluster = TestCluster::start(2);
  ASSERT_TRUE(cluster);
  auto client_info = load_info(cluster->paths().client_connection_file, Role::kClient);
  auto engine_info = load_info(cluster->paths().engine_connection_file, Role::kEngine);
  expect_cluster_serves(*cluster, {0, 1});
  auto rogue = tls_peer(*cluster);
  ASSERT_TRUE(rogue);
  ASSERT_TRUE(rogue->hello(Role::kClient, engine_info.capability).ok());
  expect_rejected_and_closed(*rogue, "capability proof failed");
  auto [rc, out] = run_command(testudo_binary() + " --profile test status");
  ASSERT_EQ(rc, 0) << out;

  std::vector<std::string> secrets;
  for (const auto& cap : {client_info.capability, engine_info.capability}) {
    secrets.push_back(crypto::to_hex(cap));
    std::string upper = crypto::to_hex(cap);
    for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    secrets.push_back(upper);
    secrets.emplace_back(reinterpret_cast<const char*>(cap.data()), cap.size());
  }
  std::vector<std::string> places;
  for (const auto& entry : std::filesystem::directory_iterator(cluster->paths().log_dir)) {
    places.push_back(entry.path().string());
  }
  std::vector<pid_t> pids = cluster->processes().engines;
  pids.push_back(cluster->processes().controller);
  for (pid_t pid : pids) {
    places.push_back("/proc/" + std::to_string(pid) + "/cmdline");
    places.push_back("/proc/" + std::to_string(pid) + "/environ");
  }
  ASSERT_GE(places.size(), 3u + 2 * pids.size());
  for (const auto& place : places) {
    std::string text = read_file(place);
    EXPECT_FALSE(text.empty()) << place;
    for (const auto& secret : secrets) EXPECT_FALSE(contains(text, secret)) << "a capability appears in " << place;
  }
  EXPECT_TRUE(contains(out, "2 engine(s)"));
}

// ---------------- T1: clients without the client capability ----------------

TEST(SecurityTest, T1_ClientWithoutCapabilityIsRejected) {
  auto cluster = TestCluster::start(2);
  ASSERT_TRUE(cluster);
  const auto ids = engine_ids_of(*cluster);
  ASSERT_EQ(ids.size(), 2u);

  auto rogue = tls_peer(*cluster);
  ASSERT_TRUE(rogue);
  const std::string where = rogue->local_address();
  ASSERT_TRUE(rogue->hello(Role::kClient, random_capability()).ok());
  expect_rejected_and_closed(*rogue, "capability proof failed for role client");
  EXPECT_TRUE(audit_logged(*cluster, {"rejected " + where + " (unauthenticated)", "capability proof failed for role client"}))
      << read_file(cluster->controller_log());

  ASSERT_NO_FATAL_FAILURE(expect_cluster_serves(*cluster, ids));
}

TEST(SecurityTest, T1_ClientWithTheEngineCapabilityIsRejected) {
  auto cluster = TestCluster::start(2);
  ASSERT_TRUE(cluster);
  const auto ids = engine_ids_of(*cluster);
  ASSERT_EQ(ids.size(), 2u);
  const auto engine_cap = load_info(cluster->paths().engine_connection_file, Role::kEngine).capability;
  const auto client_cap = load_info(cluster->paths().client_connection_file, Role::kClient).capability;
  ASSERT_NE(engine_cap, client_cap) << "the two roles must have distinct capabilities";

  auto rogue = tls_peer(*cluster);
  ASSERT_TRUE(rogue);
  const std::string where = rogue->local_address();
  ASSERT_TRUE(rogue->hello(Role::kClient, engine_cap).ok());
  expect_rejected_and_closed(*rogue, "capability proof failed for role client");
  EXPECT_TRUE(audit_logged(*cluster, {"rejected " + where + " (unauthenticated)", "capability proof failed for role client"}))
      << read_file(cluster->controller_log());

  ASSERT_NO_FATAL_FAILURE(expect_cluster_serves(*cluster, ids));
}

// T1/T17: before authentication only kHello exists. Every other kind, however harmless or
// harmful (shutdown!), is rejected and not acted upon.
TEST(SecurityTest, T1_T17_AnythingButHelloFirstIsRejected) {
  auto cluster = TestCluster::start(2);
  ASSERT_TRUE(cluster);
  const auto ids = engine_ids_of(*cluster);
  ASSERT_EQ(ids.size(), 2u);

  for (MessageKind kind : {MessageKind::kExecute, MessageKind::kClusterShutdown, MessageKind::kEngineList,
                           MessageKind::kClusterStatus, MessageKind::kHeartbeat, MessageKind::kTaskReply,
                           MessageKind::kWelcome, MessageKind::kPull}) {
    SCOPED_TRACE(std::string("first message: ") + std::string(wire::kind_name(kind)));
    auto rogue = tls_peer(*cluster);
    ASSERT_TRUE(rogue);
    const std::string where = rogue->local_address();
    wire::Envelope e;
    e.kind = kind;
    e.request_id = 7;
    e.targets = ids;
    ASSERT_TRUE(rogue->send(e).ok());
    expect_rejected_and_closed(*rogue, "expected hello");
    EXPECT_TRUE(audit_logged(*cluster, {"rejected " + where + " (unauthenticated)", "expected hello"}))
        << read_file(cluster->controller_log());
  }

  // An execute with its code segment before any hello: the pre-auth limits allow no body,
  // so the connection is cut; the code never reaches an engine.
  {
    auto rogue = tls_peer(*cluster);
    ASSERT_TRUE(rogue);
    wire::Envelope e;
    e.kind = MessageKind::kExecute;
    e.request_id = 8;
    e.targets = ids;
    ASSERT_TRUE(rogue->send(e, {text_segment("pwned = 1")}).ok());
    EXPECT_TRUE(rogue->closed_within(3s));
    for (const auto& m : rogue->received()) EXPECT_EQ(m.envelope.kind, MessageKind::kRejected);
  }

  ASSERT_NO_FATAL_FAILURE(expect_cluster_serves(*cluster, ids));
  ASSERT_NO_FATAL_FAILURE(expect_undefined_on(*cluster, ids, "pwned"));
}

// ---------------- T2: rogue engines ----------------

TEST(SecurityTest, T2_RawRogueEngineIsRejected) {
  auto cluster = TestCluster::start(2);
  ASSERT_TRUE(cluster);
  const auto ids = engine_ids_of(*cluster);
  ASSERT_EQ(ids.size(), 2u);
  const auto client_cap = load_info(cluster->paths().client_connection_file, Role::kClient).capability;

  // No capability at all, then (T16) the client's capability claiming the engine role.
  for (const auto& [what, cap] : {std::pair<std::string, auth::Capability>{"random capability", random_capability()},
                                  std::pair<std::string, auth::Capability>{"client capability", client_cap}}) {
    SCOPED_TRACE(what);
    auto rogue = tls_peer(*cluster);
    ASSERT_TRUE(rogue);
    const std::string where = rogue->local_address();
    ASSERT_TRUE(rogue->hello(Role::kEngine, cap).ok());
    expect_rejected_and_closed(*rogue, "capability proof failed for role engine");
    EXPECT_TRUE(audit_logged(*cluster, {"rejected " + where + " (unauthenticated)", "capability proof failed for role engine"}))
        << read_file(cluster->controller_log());
    EXPECT_EQ(engine_ids_of(*cluster), ids);
  }
  ASSERT_NO_FATAL_FAILURE(expect_cluster_serves(*cluster, ids));
}

TEST(SecurityTest, T2_EngineProcessWithForgedConnectionFileExitsAndNeverRegisters) {
  auto cluster = TestCluster::start(1);
  ASSERT_TRUE(cluster);
  const auto ids = engine_ids_of(*cluster);
  ASSERT_EQ(ids.size(), 1u);

  // Everything right but the secret: same host, port and pinned fingerprint, mode 0600.
  auth::ConnectionInfo forged = load_info(cluster->paths().engine_connection_file, Role::kEngine);
  forged.capability = random_capability();
  const std::string file = cluster->home() + "/forged-engine.json";
  ASSERT_TRUE(auth::save_connection_file(file, forged).ok());
  struct stat st{};
  ASSERT_EQ(::stat(file.c_str(), &st), 0);
  ASSERT_EQ(st.st_mode & 0777, 0600u);

  auto started = Clock::now();
  auto [rc, out] =
      run_command("timeout 30 " + testudo_binary() + " --profile " + cluster->profile() + " engine --file " + file);
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(rc, 124) << "the forged engine kept running (it should give up at once):\n" << out;
  EXPECT_TRUE(contains(out, "refused")) << out;
  EXPECT_TRUE(contains(out, "capability proof failed for role engine")) << out;
  EXPECT_FALSE(contains(out, crypto::to_hex(forged.capability))) << "the capability must never be printed";
  EXPECT_LT(Clock::now() - started, 20s);
  EXPECT_TRUE(audit_logged(*cluster, {"(unauthenticated)", "capability proof failed for role engine"}))
      << read_file(cluster->controller_log());

  ASSERT_NO_FATAL_FAILURE(expect_cluster_serves(*cluster, ids));
}

// ---------------- T3: hostile controller ----------------

// A net::Listener with its own certificate on its own loop thread, counting what reaches it.
class HostileController {
 public:
  HostileController() {
    thread_ = std::thread([this] { loop_.run(); });
    auto identity = tls::generate_self_signed("testudo-controller");
    EXPECT_TRUE(identity.ok());
    fingerprint_ = *tls::fingerprint_of_pem(identity->cert_pem);
    net::ListenOptions o;
    o.tls.identity = *identity;
    on_loop([this, o] {
      auto l = net::Listener::create(loop_, o, [this](std::shared_ptr<net::Connection> c) {
        ++accepted_;
        connections_.push_back(c);
        c->start({[this](wire::Message&&) { ++messages_; }, [](const Status&) {}});
      });
      EXPECT_TRUE(l.ok()) << l.status().to_string();
      if (l.ok()) listener_ = std::move(l).value();
    });
  }
  ~HostileController() {
    on_loop([this] {
      for (auto& c : connections_) c->close(cancelled_status());
      connections_.clear();
      listener_.reset();
    });
    loop_.stop();
    thread_.join();
  }

  std::uint16_t port() {
    std::uint16_t p = 0;
    on_loop([&] { p = listener_ ? listener_->port() : 0; });
    return p;
  }
  const std::string& fingerprint() const { return fingerprint_; }
  int accepted() const { return accepted_; }
  int messages() const { return messages_; }
  std::uint64_t bytes_received() {
    std::uint64_t n = 0;
    on_loop([&] {
      for (auto& c : connections_) n += c->bytes_received();
    });
    return n;
  }

 private:
  static Status cancelled_status() { return Status(StatusCode::kCancelled, "test over"); }
  void on_loop(std::function<void()> fn) {
    auto done = std::make_shared<std::promise<void>>();
    auto future = done->get_future();
    loop_.post([fn = std::move(fn), done] {
      fn();
      done->set_value();
    });
    ASSERT_EQ(future.wait_for(5s), std::future_status::ready) << "the hostile controller's loop is stuck";
  }

  net::EventLoop loop_;
  std::thread thread_;
  std::string fingerprint_;
  std::unique_ptr<net::Listener> listener_;
  std::vector<std::shared_ptr<net::Connection>> connections_;  // loop thread only
  std::atomic<int> accepted_{0};
  std::atomic<int> messages_{0};
};

TEST(SecurityTest, T3_HostileControllerLearnsNothing) {
  auto cluster = TestCluster::start(1);
  ASSERT_TRUE(cluster);
  const auto ids = engine_ids_of(*cluster);
  const auth::ConnectionInfo real = load_info(cluster->paths().client_connection_file, Role::kClient);

  HostileController hostile;
  ASSERT_NE(hostile.port(), 0);
  ASSERT_NE(hostile.fingerprint(), real.fingerprint);

  // The connection file is genuine (real fingerprint, real capability) but points at the
  // hostile listener's port: the handshake fails on the client side before anything is sent.
  auth::ConnectionInfo redirected = real;
  redirected.port = hostile.port();
  const std::string file = cluster->home() + "/redirected-client.json";
  ASSERT_TRUE(auth::save_connection_file(file, redirected).ok());
  ClientOptions o;
  o.connection_file = file;
  o.connect_timeout = 5s;
  auto c = Client::connect(o);
  ASSERT_FALSE(c.ok()) << "connected to a controller with the wrong certificate";
  EXPECT_EQ(c.status().code(), StatusCode::kUnauthenticated) << c.status().to_string();
  EXPECT_TRUE(contains(c.status().message(), "fingerprint")) << c.status().to_string();

  // The same for an engine process pointed at it. It refuses the impostor on every attempt
  // and keeps trying (the real controller may be restarting: T19) until --give-up passes.
  auth::ConnectionInfo engine_real = load_info(cluster->paths().engine_connection_file, Role::kEngine);
  engine_real.port = hostile.port();
  const std::string engine_file = cluster->home() + "/redirected-engine.json";
  ASSERT_TRUE(auth::save_connection_file(engine_file, engine_real).ok());
  auto [rc, out] = run_command("timeout 30 " + testudo_binary() + " --profile " + cluster->profile() +
                               " engine --give-up 2 --file " + engine_file);
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(rc, 124) << "the engine did not give up after --give-up:\n" << out;
  EXPECT_TRUE(contains(out, "fingerprint")) << out;
  EXPECT_TRUE(contains(out, "retrying until the real controller answers")) << out;

  std::this_thread::sleep_for(300ms);  // let the hostile side process whatever arrived
  if (hostile.accepted() > 0) {
    EXPECT_EQ(hostile.bytes_received(), 0u) << "application bytes reached the hostile controller";
  }
  EXPECT_EQ(hostile.messages(), 0) << "a message (a hello with a proof?) reached the hostile controller";
  EXPECT_EQ(hostile.accepted(), 0) << "the TLS handshake completed with the hostile controller";

  // Control: a peer that pins the hostile certificate does get through, and the counters see it.
  auto control = TlsPeer::connect(hostile.port(), hostile.fingerprint());
  ASSERT_TRUE(control.ok()) << control.status().to_string();
  ASSERT_TRUE((*control)->hello(Role::kClient, random_capability()).ok());
  EXPECT_TRUE(wait_until([&] { return hostile.messages() == 1; }, 5s));
  EXPECT_EQ(hostile.accepted(), 1);
  EXPECT_GT(hostile.bytes_received(), 0u);

  ASSERT_NO_FATAL_FAILURE(expect_cluster_serves(*cluster, ids));
}

TEST(SecurityTest, T3_AlteredPinnedFingerprintIsRefused) {
  auto cluster = TestCluster::start(1);
  ASSERT_TRUE(cluster);
  const auto ids = engine_ids_of(*cluster);
  auth::ConnectionInfo info = load_info(cluster->paths().client_connection_file, Role::kClient);
  char& last = info.fingerprint.back();
  last = last == '0' ? '1' : '0';  // one hex digit off, still well-formed
  const std::string file = cluster->home() + "/altered-client.json";
  ASSERT_TRUE(auth::save_connection_file(file, info).ok());
  ClientOptions o;
  o.connection_file = file;
  o.connect_timeout = 5s;
  auto c = Client::connect(o);
  ASSERT_FALSE(c.ok()) << "connected although the pinned fingerprint is wrong";
  EXPECT_EQ(c.status().code(), StatusCode::kUnauthenticated) << c.status().to_string();
  EXPECT_TRUE(contains(c.status().message(), "fingerprint")) << c.status().to_string();

  // The controller saw a failed handshake at most, never a hello.
  EXPECT_FALSE(contains(read_file(cluster->controller_log()), "audit: rejected"));
  ASSERT_NO_FATAL_FAILURE(expect_cluster_serves(*cluster, ids));
}

// ---------------- T4: eavesdropper on loopback ----------------

// A TCP relay on 127.0.0.1:0 to the controller, recording every byte in both directions.
class RecordingProxy {
 public:
  explicit RecordingProxy(std::uint16_t target) : target_(target) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    EXPECT_EQ(::listen(listen_fd_, 16), 0);
    socklen_t len = sizeof addr;
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { run(); });
  }
  ~RecordingProxy() {
    stop_ = true;
    thread_.join();
    for (auto& p : pairs_) {
      if (p.a >= 0) ::close(p.a);
      if (p.b >= 0) ::close(p.b);
    }
    ::close(listen_fd_);
  }
  std::uint16_t port() const { return port_; }
  std::string to_controller() const {
    std::lock_guard lock(mutex_);
    return up_;
  }
  std::string to_client() const {
    std::lock_guard lock(mutex_);
    return down_;
  }
  int connections() const { return connections_; }

 private:
  struct Pair {
    int a = -1;  // the client side
    int b = -1;  // the controller side
  };

  static bool send_all(int fd, const char* p, std::size_t n) {
    while (n > 0) {
      ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return false;
      p += w;
      n -= static_cast<std::size_t>(w);
    }
    return true;
  }

  void run() {
    char buf[65536];
    while (!stop_) {
      std::vector<pollfd> fds{{listen_fd_, POLLIN, 0}};
      for (const auto& p : pairs_) {
        fds.push_back({p.a, POLLIN, 0});
        fds.push_back({p.b, POLLIN, 0});
      }
      if (::poll(fds.data(), fds.size(), 50) <= 0) continue;
      if (fds[0].revents & POLLIN) {
        int a = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
        int b = a >= 0 ? tcp_connect(target_) : -1;
        if (a >= 0 && b >= 0) {
          pairs_.push_back({a, b});
          ++connections_;
        } else if (a >= 0) {
          ::close(a);
        }
      }
      for (std::size_t i = 1; i < fds.size(); ++i) {
        if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR)) || fds[i].fd < 0) continue;
        Pair& p = pairs_[(i - 1) / 2];
        if (p.a < 0) continue;
        const bool up = fds[i].fd == p.a;
        ssize_t n = ::recv(fds[i].fd, buf, sizeof buf, 0);
        if (n > 0) {
          {
            std::lock_guard lock(mutex_);
            (up ? up_ : down_).append(buf, static_cast<std::size_t>(n));
          }
          if (send_all(up ? p.b : p.a, buf, static_cast<std::size_t>(n))) continue;
        }
        ::close(p.a);
        ::close(p.b);
        p.a = p.b = -1;
      }
      std::erase_if(pairs_, [](const Pair& p) { return p.a < 0; });
    }
  }

  std::uint16_t target_;
  int listen_fd_ = -1;
  std::uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> connections_{0};
  std::vector<Pair> pairs_;  // proxy thread only (and the destructor after join)
  mutable std::mutex mutex_;
  std::string up_, down_;
  std::thread thread_;
};

TEST(SecurityTest, T4_EavesdropperSeesOnlyTls) {
  auto cluster = TestCluster::start(1);
  ASSERT_TRUE(cluster);
  const auth::ConnectionInfo real = load_info(cluster->paths().client_connection_file, Role::kClient);
  RecordingProxy proxy(real.port);

  auth::ConnectionInfo via_proxy = real;
  via_proxy.port = proxy.port();
  const std::string file = cluster->home() + "/via-proxy-client.json";
  ASSERT_TRUE(auth::save_connection_file(file, via_proxy).ok());
  ClientOptions o;
  o.connection_file = file;
  o.connect_timeout = 10s;
  auto client = Client::connect(o);
  ASSERT_TRUE(client.ok()) << client.status().to_string();
  auto ids = (*client)->engine_ids();
  ASSERT_TRUE(ids.ok()) << ids.status().to_string();
  ASSERT_EQ(ids->size(), 1u);

  const std::string kDataMarker = "TESTUDO-MARKER-4f1c";
  const std::string kCodeMarker = "TESTUDO-CODE-MARKER-9b2e";
  auto pushed = (*client)->push_literals(*ids, {{"m", "'" + kDataMarker + "'"}}).get(20s);
  ASSERT_TRUE(pushed.ok()) << pushed.status().to_string();
  for (const auto& r : *pushed) ASSERT_TRUE(r.status.ok()) << r.status.to_string();
  auto executed = (*client)->execute(*ids, "code_marker = '" + kCodeMarker + "'\nprint(code_marker)").get(20s);
  ASSERT_TRUE(executed.ok()) << executed.status().to_string();
  for (const auto& r : *executed) {
    ASSERT_TRUE(r.status.ok()) << r.status.to_string();
    EXPECT_EQ(r.stdout_text, kCodeMarker + "\n");
  }
  auto pulled = (*client)->pull_repr(*ids, {"m", "code_marker"}).get(20s);
  ASSERT_TRUE(pulled.ok()) << pulled.status().to_string();
  for (const auto& r : *pulled) {
    ASSERT_TRUE(r.status.ok()) << r.status.to_string();
    ASSERT_EQ(r.value.size(), 2u);
    EXPECT_EQ(r.value[0].to_string(), "'" + kDataMarker + "'");
    EXPECT_EQ(r.value[1].to_string(), "'" + kCodeMarker + "'");
  }
  client->reset();
  EXPECT_EQ(proxy.connections(), 1);

  const std::string up = proxy.to_controller();
  const std::string down = proxy.to_client();
  const std::string all = up + down;
  ASSERT_GT(all.size(), 1000u) << "the recording is too small to have carried the session";
  ASSERT_GE(up.size(), 2u);
  ASSERT_GE(down.size(), 2u);
  EXPECT_EQ(up[0], '\x16') << "the client's first bytes are not a TLS handshake record";
  EXPECT_EQ(up[1], '\x03');
  EXPECT_EQ(down[0], '\x16') << "the controller's first bytes are not a TLS handshake record";
  EXPECT_EQ(down[1], '\x03');

  const std::string cap_hex = crypto::to_hex(real.capability);
  std::string cap_hex_upper = cap_hex;
  std::transform(cap_hex_upper.begin(), cap_hex_upper.end(), cap_hex_upper.begin(), ::toupper);
  const std::string cap_raw(reinterpret_cast<const char*>(real.capability.data()), real.capability.size());
  for (const auto& [what, needle] : std::vector<std::pair<std::string, std::string>>{
           {"the pushed marker", kDataMarker},
           {"the code marker", kCodeMarker},
           {"the testudo frame magic", "TSTU"},
           {"the capability (hex)", cap_hex},
           {"the capability (HEX)", cap_hex_upper},
           {"the capability (raw)", cap_raw},
           {"half the capability (hex)", cap_hex.substr(0, 32)},
           // TLS 1.3 encrypts certificates: a listener cannot even learn who connected
           // (MCollective's "attackers can gain access to the client public key by listening").
           {"the client's public key", client_public_key_der(*cluster)},
           {"the client certificate's name", "testudo-client"}}) {
    ASSERT_FALSE(needle.empty()) << what;
    EXPECT_FALSE(contains(all, needle)) << what << " is visible on the wire";
  }
}

// ---------------- T7: loose file modes ----------------

TEST(SecurityTest, T7_LooseConnectionFileModesAreRefused) {
  auto cluster = TestCluster::start(1);
  ASSERT_TRUE(cluster);
  const auto ids = engine_ids_of(*cluster);
  const std::string client_file = cluster->paths().client_connection_file;
  const std::string engine_file = cluster->paths().engine_connection_file;

  ASSERT_EQ(::chmod(client_file.c_str(), 0640), 0);
  ClientOptions o;
  o.profile = cluster->profile();
  auto c = Client::connect(o);
  ASSERT_FALSE(c.ok()) << "a group-readable connection file was accepted";
  EXPECT_EQ(c.status().code(), StatusCode::kPermissionDenied) << c.status().to_string();
  EXPECT_TRUE(contains(c.status().message(), client_file)) << c.status().to_string();
  EXPECT_TRUE(contains(c.status().message(), "chmod 600")) << c.status().to_string();

  auto [rc, out] = run_command("timeout 30 " + testudo_binary() + " --profile " + cluster->profile() + " status");
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(rc, 124) << out;
  EXPECT_TRUE(contains(out, client_file)) << out;
  EXPECT_TRUE(contains(out, "chmod 600")) << out;

  ASSERT_EQ(::chmod(engine_file.c_str(), 0644), 0);
  auto [erc, eout] = run_command("timeout 30 " + testudo_binary() + " --profile " + cluster->profile() + " engine");
  EXPECT_NE(erc, 0) << eout;
  EXPECT_NE(erc, 124) << "the engine started with a world-readable connection file:\n" << eout;
  EXPECT_TRUE(contains(eout, engine_file)) << eout;
  EXPECT_TRUE(contains(eout, "chmod 600")) << eout;

  ASSERT_EQ(::chmod(client_file.c_str(), 0600), 0);
  ASSERT_EQ(::chmod(engine_file.c_str(), 0600), 0);
  ASSERT_NO_FATAL_FAILURE(expect_cluster_serves(*cluster, ids));
}

// ---------------- T16: role confusion after authentication ----------------

TEST(SecurityTest, T16_EngineSendingClientRequestIsRejected) {
  auto cluster = TestCluster::start(2);
  ASSERT_TRUE(cluster);
  const auto ids = engine_ids_of(*cluster);
  ASSERT_EQ(ids.size(), 2u);
  const auto engine_cap = load_info(cluster->paths().engine_connection_file, Role::kEngine).capability;

  auto rogue = tls_peer(*cluster, Role::kEngine);
  ASSERT_TRUE(rogue);
  const std::string where = rogue->local_address();
  const std::uint32_t rogue_id = expect_welcome(*rogue, Role::kEngine, engine_cap);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), rogue_id), 0);

  wire::Envelope e;
  e.kind = MessageKind::kExecute;
  e.request_id = 1;
  e.targets = {ids[0]};
  ASSERT_TRUE(rogue->send(e, {text_segment("pwned = 1")}).ok());
  expect_rejected_and_closed(*rogue, "may not send 'execute'");
  EXPECT_TRUE(audit_logged(*cluster, {"rejected " + where + " (engine " + std::to_string(rogue_id) + ")",
                                      "may not send 'execute'"}))
      << read_file(cluster->controller_log());

  EXPECT_TRUE(wait_until([&] { return engine_ids_of(*cluster) == ids; }, 5s))
      << "the rejected engine connection is still registered";
  ASSERT_NO_FATAL_FAILURE(expect_undefined_on(*cluster, ids, "pwned"));
  ASSERT_NO_FATAL_FAILURE(expect_cluster_serves(*cluster, ids));
}

TEST(SecurityTest, T16_ClientSendingTaskReplyIsRejected) {
  auto cluster = TestCluster::start(1);
  ASSERT_TRUE(cluster);
  const auto ids = engine_ids_of(*cluster);
  const auto client_cap = load_info(cluster->paths().client_connection_file, Role::kClient).capability;

  // A legitimate client with a request in flight: a forged reply must not reach it.
  auto victim = cluster->client();
  ASSERT_TRUE(victim);
  auto slow = victim->execute(ids, "import time; time.sleep(1.0); victim_value = 'real'");

  auto rogue = tls_peer(*cluster);
  ASSERT_TRUE(rogue);
  const std::string where = rogue->local_address();
  const std::uint32_t rogue_id = expect_welcome(*rogue, Role::kClient, client_cap);
  wire::Envelope e;
  e.kind = MessageKind::kTaskReply;
  e.request_id = slow.request_id();
  e.task_id = 1;
  e.engine_id = ids[0];
  ASSERT_TRUE(rogue->send(e, {text_segment("forged")}).ok());
  expect_rejected_and_closed(*rogue, "may not send 'task-reply'");
  EXPECT_TRUE(audit_logged(*cluster, {"rejected " + where + " (client " + std::to_string(rogue_id) + ")",
                                      "may not send 'task-reply'"}))
      << read_file(cluster->controller_log());

  auto replies = slow.get(20s);
  ASSERT_TRUE(replies.ok()) << replies.status().to_string();
  for (const auto& r : *replies) EXPECT_TRUE(r.status.ok()) << r.status.to_string();
  ASSERT_NO_FATAL_FAILURE(expect_cluster_serves(*cluster, ids));
}

// ---------------- T12: malformed, oversized, endless; floods ----------------

TEST(SecurityTest, T12_GarbageOverTlsClosesTheConnection) {
  auto cluster = TestCluster::start(1);
  ASSERT_TRUE(cluster);
  const auto ids = engine_ids_of(*cluster);
  auto rogue = tls_peer(*cluster);
  ASSERT_TRUE(rogue);
  std::string garbage = random_bytes(4096);
  garbage[0] = 'X';  // never the frame magic by chance
  ASSERT_TRUE(rogue->send_bytes(garbage).ok());
  EXPECT_TRUE(rogue->closed_within(3s)) << "the controller kept reading garbage";
  for (const auto& m : rogue->received()) EXPECT_EQ(m.envelope.kind, MessageKind::kRejected);
  ASSERT_NO_FATAL_FAILURE(expect_cluster_serves(*cluster, ids));
}

TEST(SecurityTest, T12_HugeFrameLengthBeforeAuthIsClosedAtOnce) {
  auto cluster = TestCluster::start(1);
  ASSERT_TRUE(cluster);
  const auto ids = engine_ids_of(*cluster);
  for (auto type : {wire::FrameType::kHead, wire::FrameType::kData}) {
    SCOPED_TRACE(type == wire::FrameType::kHead ? "head frame" : "data frame");
    auto rogue = tls_peer(*cluster);
    ASSERT_TRUE(rogue);
    auto header = wire::encode_frame_header({type, 0xFFFFFFF0u});
    auto started = Clock::now();
    ASSERT_TRUE(rogue->send_bytes(std::string_view(reinterpret_cast<const char*>(header.data()), header.size())).ok());
    EXPECT_TRUE(rogue->closed_within(3s)) << "the controller waited for 4 GiB from an unauthenticated peer";
    EXPECT_LT(Clock::now() - started, 2s);
  }
  ASSERT_NO_FATAL_FAILURE(expect_cluster_serves(*cluster, ids));
}

TEST(SecurityTest, T12_StalledHalfHeaderIsDroppedAfterTheHelloTimeout) {
  auto cluster = TestCluster::start(1);
  ASSERT_TRUE(cluster);
  const auto ids = engine_ids_of(*cluster);
  auto rogue = tls_peer(*cluster);
  ASSERT_TRUE(rogue);
  const std::string where = rogue->local_address();
  auto header = wire::encode_frame_header({wire::FrameType::kHead, 100});
  auto started = Clock::now();
  ASSERT_TRUE(rogue->send_bytes(std::string_view(reinterpret_cast<const char*>(header.data()), 6)).ok());

  // Others are served while the stalled peer holds its connection.
  ASSERT_NO_FATAL_FAILURE(expect_cluster_serves(*cluster, ids));

  EXPECT_TRUE(rogue->closed_within(15s)) << "a peer stalled in its first frame was never dropped";
  auto elapsed = Clock::now() - started;
  EXPECT_GT(elapsed, 8s) << "dropped before the hello timeout: by what?";
  ASSERT_EQ(rogue->received().size(), 1u);
  EXPECT_EQ(rogue->received()[0].envelope.kind, MessageKind::kRejected);
  EXPECT_TRUE(contains(rogue->received()[0].envelope.text, "no valid hello in time"));
  EXPECT_TRUE(audit_logged(*cluster, {"rejected " + where + " (unauthenticated)", "no valid hello in time"}))
      << read_file(cluster->controller_log());
  ASSERT_NO_FATAL_FAILURE(expect_cluster_serves(*cluster, ids));
}

TEST(SecurityTest, T12_PlainTcpGarbageAndConnectionFloodDoNotStopService) {
  auto cluster = TestCluster::start(1);
  ASSERT_TRUE(cluster);
  const auto ids = engine_ids_of(*cluster);
  const auto port = load_info(cluster->paths().client_connection_file, Role::kClient).port;

  // Not TLS at all: the controller's handshake fails and it closes the socket.
  {
    int fd = tcp_connect(port);
    ASSERT_GE(fd, 0);
    std::string garbage = "GET / HTTP/1.1\r\nHost: testudo\r\n\r\n" + random_bytes(2048);
    ASSERT_EQ(::send(fd, garbage.data(), garbage.size(), MSG_NOSIGNAL), static_cast<ssize_t>(garbage.size()));
    EXPECT_TRUE(tcp_closed_within(fd, 3s)) << "plain-TCP garbage did not get the connection closed";
    ::close(fd);
  }

  // 200 TCP connections that never start a handshake, held open while a client works.
  IdleConnections flood(port, 200);
  EXPECT_EQ(flood.size(), 200u);
  std::this_thread::sleep_for(200ms);  // let the controller accept them all
  auto started = Clock::now();
  {
    ClientOptions o;
    o.profile = cluster->profile();
    o.connect_timeout = 5s;
    auto c = Client::connect(o);
    ASSERT_TRUE(c.ok()) << "a legitimate client could not connect during the flood: " << c.status().to_string();
    auto r = (*c)->execute(ids, "flood_probe = 1").get(5s);
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    for (const auto& e : *r) EXPECT_TRUE(e.status.ok()) << e.status.to_string();
  }
  EXPECT_LT(Clock::now() - started, 5s) << "the round trip during the flood was too slow";
  EXPECT_TRUE(launch::process_alive(cluster->processes().controller));
  flood.close_all();

  ASSERT_NO_FATAL_FAILURE(expect_cluster_serves(*cluster, ids));
}

// One unauthenticated host opening more idle TCP connections than the listener's cap on
// pending TLS handshakes (256) must not lock legitimate clients and engines out: T12 asks
// for "no hang for others" under connection floods.
TEST(SecurityTest, T12_FloodBeyondThePendingHandshakeCapDoesNotLockOutOthers) {
  auto cluster = TestCluster::start(1);
  ASSERT_TRUE(cluster);
  const auto ids = engine_ids_of(*cluster);
  const auto port = load_info(cluster->paths().client_connection_file, Role::kClient).port;

  IdleConnections flood(port, 300);
  EXPECT_EQ(flood.size(), 300u);
  std::this_thread::sleep_for(200ms);  // let the controller accept them all

  // An engine (re)joining during the flood: a transient refusal must not make it give up.
  const pid_t late_engine = cluster->start_engine();
  ClientOptions o;
  o.profile = cluster->profile();
  o.connect_timeout = 5s;
  auto c = Client::connect(o);
  EXPECT_TRUE(c.ok()) << "a legitimate client was locked out by 300 idle TCP connections: " << c.status().to_string();
  if (c.ok()) {
    auto r = (*c)->execute(ids, "flood_probe = 1").get(5s);
    EXPECT_TRUE(r.ok()) << r.status().to_string();
  }
  EXPECT_TRUE(launch::process_alive(cluster->processes().controller));
  std::this_thread::sleep_for(1s);
  flood.close_all();

  EXPECT_TRUE(cluster->wait_for_engines(2, 10s))
      << "the engine started during the flood never registered; alive: " << launch::process_alive(late_engine)
      << "\n" << read_file(cluster->paths().log_dir + "/engine-extra-0.log");
  EXPECT_TRUE(launch::process_alive(cluster->processes().controller));
}

TEST(SecurityTest, T12_AuthenticatedUnknownMessageKindClosesOnlyThatConnection) {
  auto cluster = TestCluster::start(1);
  ASSERT_TRUE(cluster);
  const auto ids = engine_ids_of(*cluster);
  const auto client_cap = load_info(cluster->paths().client_connection_file, Role::kClient).capability;
  auto bystander = cluster->client();
  ASSERT_TRUE(bystander);

  auto rogue = tls_peer(*cluster);
  ASSERT_TRUE(rogue);
  expect_welcome(*rogue, Role::kClient, client_cap);
  wire::Envelope e;
  e.kind = static_cast<MessageKind>(999);
  e.request_id = 3;
  e.targets = ids;
  ASSERT_TRUE(rogue->send(e).ok());
  EXPECT_TRUE(rogue->closed_within(3s)) << "a message of unknown kind did not close the connection";
  for (const auto& m : rogue->received()) EXPECT_EQ(m.envelope.kind, MessageKind::kRejected);

  // The client that was connected all along is unaffected.
  ASSERT_NO_FATAL_FAILURE(expect_client_still_served(*bystander, ids));
  ASSERT_NO_FATAL_FAILURE(expect_cluster_serves(*cluster, ids));
}

// Overtaking frames (wire/message.h): a small order-free message sent between the frames of a
// large one. Out of place — outside a message in progress, on a kind whose order matters, cut
// by another frame — it closes that connection and nothing else; in place, it is answered
// before the large message has finished arriving.
std::string raw_frame(wire::FrameType type, std::span<const std::byte> payload, bool overtaking,
                      bool abandons = false) {
  std::string out;
  auto header = wire::encode_frame_header({type, static_cast<std::uint32_t>(payload.size()), overtaking, abandons});
  out.append(reinterpret_cast<const char*>(header.data()), header.size());
  out.append(reinterpret_cast<const char*>(payload.data()), payload.size());
  return out;
}
std::string raw_head(const wire::Envelope& e, const std::vector<SharedBytes>& segments, bool overtaking) {
  return raw_frame(wire::FrameType::kHead, wire::encode_head(e, segments), overtaking);
}
std::string raw_data(std::size_t n, bool overtaking) {
  std::vector<std::byte> bytes(n, std::byte{'p'});
  return raw_frame(wire::FrameType::kData, bytes, overtaking);
}

TEST(SecurityTest, T12_OvertakingFramesOutOfPlaceCloseOnlyThatConnection) {
  auto cluster = TestCluster::start(1);
  ASSERT_TRUE(cluster);
  const auto ids = engine_ids_of(*cluster);
  const auto client_cap = load_info(cluster->paths().client_connection_file, Role::kClient).capability;
  auto bystander = cluster->client();
  ASSERT_TRUE(bystander);

  wire::Envelope beat;
  beat.kind = MessageKind::kHeartbeat;
  wire::Envelope push;
  push.kind = MessageKind::kPush;
  push.request_id = 5;
  push.targets = ids;
  push.set_value_format(wire::ValueFormat::kPickle);
  const std::vector<SharedBytes> two_mib{SharedBytes::allocate(2u << 20)};
  wire::Envelope execute;
  execute.kind = MessageKind::kExecute;
  execute.request_id = 6;
  execute.targets = ids;
  const std::vector<SharedBytes> code{text_segment("x = 1")};
  wire::Envelope status;
  status.kind = MessageKind::kQueueStatus;

  // In place: a heartbeat between the first and second data frame of a push is answered
  // while the push is still incomplete.
  {
    auto peer = tls_peer(*cluster);
    ASSERT_TRUE(peer);
    expect_welcome(*peer, Role::kClient, client_cap);
    ASSERT_TRUE(peer->send_bytes(raw_head(push, two_mib, false) + raw_data(1u << 20, false)).ok());
    ASSERT_TRUE(peer->send_bytes(raw_head(beat, {}, true)).ok());
    auto ack = peer->read_message(5s);
    ASSERT_TRUE(ack.ok()) << ack.status().to_string();
    EXPECT_EQ(ack->envelope.kind, MessageKind::kHeartbeatAck) << wire::kind_name(ack->envelope.kind);
  }

  struct Case {
    const char* what;
    std::string bytes;
  };
  const std::vector<Case> cases = {
      {"an overtaking heartbeat outside a message in progress", raw_head(beat, {}, true)},
      {"an overtaking execute inside a push",
       raw_head(push, two_mib, false) + raw_data(1u << 20, false) + raw_head(execute, code, true) +
           raw_data(5, true)},
      {"an overtaking message's data frame without the flag",
       raw_head(push, two_mib, false) + raw_data(1u << 20, false) + raw_head(beat, {}, true) +
           raw_head(status, code, true) + raw_data(5, false)},
      {"an overtaking data frame with no overtaking head", raw_head(push, two_mib, false) + raw_data(1u << 20, false) +
                                                               raw_data(1u << 20, true)},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    auto rogue = tls_peer(*cluster);
    ASSERT_TRUE(rogue);
    expect_welcome(*rogue, Role::kClient, client_cap);
    ASSERT_TRUE(rogue->send_bytes(c.bytes).ok());
    EXPECT_TRUE(rogue->closed_within(3s)) << "the connection stayed open";
    for (const auto& m : rogue->received()) {
      EXPECT_TRUE(m.envelope.kind == MessageKind::kRejected || m.envelope.kind == MessageKind::kHeartbeatAck)
          << wire::kind_name(m.envelope.kind);
    }
  }
  ASSERT_NO_FATAL_FAILURE(expect_client_still_served(*bystander, ids));
  ASSERT_NO_FATAL_FAILURE(expect_cluster_serves(*cluster, ids));
}

// Abandoning frames (wire/message.h): a client may abandon its own message halfway — a relayed
// push then ends as aborted, its engine drops the half it got and serves on, and the client's
// connection stays open. Out of place (no message in progress, with a payload, on an overtaking
// message) it closes that connection and nothing else.
std::string raw_abandon(std::size_t payload = 0, bool overtaking = false) {
  std::vector<std::byte> bytes(payload, std::byte{'z'});
  return raw_frame(wire::FrameType::kData, bytes, overtaking, /*abandons=*/true);
}

TEST(SecurityTest, T12_AbandoningFramesEndOnlyTheSendersOwnMessage) {
  auto cluster = TestCluster::start(1);
  ASSERT_TRUE(cluster);
  const auto ids = engine_ids_of(*cluster);
  const auto client_cap = load_info(cluster->paths().client_connection_file, Role::kClient).capability;
  auto bystander = cluster->client();
  ASSERT_TRUE(bystander);
  wire::Envelope push;
  push.kind = MessageKind::kPush;
  push.request_id = 5;
  push.targets = ids;
  push.set_value_format(wire::ValueFormat::kPickle);
  // Over the controller's default --relay-from-bytes (16 MiB) after the first segment: relayed.
  const std::vector<SharedBytes> large{SharedBytes::allocate(5), SharedBytes::allocate(20u << 20)};
  wire::Envelope beat;
  beat.kind = MessageKind::kHeartbeat;
  {
    auto peer = tls_peer(*cluster);
    ASSERT_TRUE(peer);
    expect_welcome(*peer, Role::kClient, client_cap);
    ASSERT_TRUE(peer->send_bytes(raw_head(push, large, false) + raw_data(5, false) + raw_data(1u << 20, false) +
                                 raw_data(1u << 20, false) + raw_abandon())
                    .ok());
    // The task ends as aborted, said to this client; its connection is still served.
    bool aborted = false;
    for (int i = 0; i < 4 && !aborted; ++i) {
      auto m = peer->read_message(5s);
      ASSERT_TRUE(m.ok()) << m.status().to_string();
      if (m->envelope.kind != MessageKind::kTaskReply) continue;
      EXPECT_EQ(m->envelope.outcome(), Outcome::kAborted);
      EXPECT_NE(m->envelope.text.find("never arrived whole"), std::string::npos) << m->envelope.text;
      aborted = true;
    }
    EXPECT_TRUE(aborted);
    ASSERT_TRUE(peer->send_bytes(raw_head(beat, {}, false)).ok());
    auto ack = peer->read_message(5s);
    ASSERT_TRUE(ack.ok()) << ack.status().to_string();
    EXPECT_EQ(ack->envelope.kind, MessageKind::kHeartbeatAck);
  }
  struct Case {
    const char* what;
    std::string bytes;
  };
  const std::vector<Case> cases = {
      {"abandoning with no message in progress", raw_abandon()},
      {"an abandoning frame with a payload", raw_head(push, large, false) + raw_data(5, false) + raw_abandon(3)},
      {"abandoning an overtaking message",
       raw_head(push, large, false) + raw_data(5, false) + raw_data(1u << 20, false) + raw_abandon(0, true)},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    auto rogue = tls_peer(*cluster);
    ASSERT_TRUE(rogue);
    expect_welcome(*rogue, Role::kClient, client_cap);
    ASSERT_TRUE(rogue->send_bytes(c.bytes).ok());
    EXPECT_TRUE(rogue->closed_within(3s)) << "the connection stayed open";
  }
  ASSERT_NO_FATAL_FAILURE(expect_client_still_served(*bystander, ids));
  ASSERT_NO_FATAL_FAILURE(expect_cluster_serves(*cluster, ids));
}

}  // namespace
}  // namespace testudo::testing
