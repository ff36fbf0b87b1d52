// tls::Session over real sockets (a Unix socket pair, non-blocking), driven the way net/
// drives it: a step, then send what output() holds, then wait for the socket.
#include "tls/session.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <thread>

namespace testudo::tls {
namespace {

KeyAndCertificate must_generate(std::string_view cn) {
  auto kc = generate_self_signed(cn);
  EXPECT_TRUE(kc.ok()) << kc.status().to_string();
  return kc.ok() ? std::move(kc).value() : KeyAndCertificate{};
}

struct Identities {
  KeyAndCertificate server = must_generate("testudo-controller");
  KeyAndCertificate client = must_generate("testudo-client");
  KeyAndCertificate impostor = must_generate("testudo-controller");
};
const Identities& ids() {
  static const Identities* const kIds = new Identities();
  return *kIds;
}

// Writes all of the session's output to `fd` (blocking on a full socket buffer).
void send_output(Session& session, int fd) {
  while (session.has_output()) {
    const std::span<const std::byte> out = session.output();
    const ssize_t n = ::send(fd, out.data(), out.size(), MSG_NOSIGNAL);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      pollfd p{fd, POLLOUT, 0};
      ::poll(&p, 1, 1000);
      continue;
    }
    ASSERT_GT(n, 0) << std::strerror(errno);
    session.consume_output(static_cast<std::size_t>(n));
  }
}

// Two sessions over a non-blocking socket pair: [0] the server's end, [1] the client's.
class SessionPair {
 public:
  explicit SessionPair(const KeyAndCertificate& server_identity = ids().server) {
    int fds[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds), 0);
    server_fd = fds[0];
    client_fd = fds[1];
    auto server_ctx = Context::server({server_identity});
    auto pin = fingerprint_of_pem(ids().server.cert_pem);
    auto client_ctx = Context::client({ids().client, pin.ok() ? *pin : ""});
    EXPECT_TRUE(server_ctx.ok() && client_ctx.ok());
    EXPECT_TRUE(server_ctx->is_server());
    EXPECT_FALSE(client_ctx->is_server());
    auto s = Session::over_socket(*server_ctx, server_fd, 64 * 1024);
    auto c = Session::over_socket(*client_ctx, client_fd, 64 * 1024);
    EXPECT_TRUE(s.ok() && c.ok());
    server = std::move(s).value();
    client = std::move(c).value();
  }
  ~SessionPair() {
    server.reset();
    client.reset();
    if (server_fd >= 0) ::close(server_fd);
    if (client_fd >= 0) ::close(client_fd);
  }

  // Steps both handshakes in turn until both are done or one fails.
  void handshake() {
    for (int round = 0; round < 20; ++round) {
      if (!client_done && !client_failure.size()) step(*client, client_fd, client_done, client_failure);
      if (!server_done && !server_failure.size()) step(*server, server_fd, server_done, server_failure);
      if ((client_done && server_done) || !client_failure.empty() || !server_failure.empty()) {
        // Let the side that did not fail read the other's alert.
        if (!server_done && server_failure.empty()) step(*server, server_fd, server_done, server_failure);
        if (!client_done && client_failure.empty()) step(*client, client_fd, client_done, client_failure);
        return;
      }
    }
  }

  // Reads exactly `size` bytes from `session`, waiting on `fd`.
  static std::string read_exactly(Session& session, int fd, std::size_t size) {
    std::string got(size, '\0');
    std::size_t filled = 0;
    while (filled < size) {
      Session::Step step = session.read(reinterpret_cast<std::byte*>(got.data()) + filled, size - filled);
      send_output(session, fd);
      if (step.failed()) {
        ADD_FAILURE() << "read failed: " << step.failure;
        return {};
      }
      filled += step.bytes;
      if (step.want_read) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, 2000) != 1) {
          ADD_FAILURE() << "nothing to read";
          return {};
        }
      }
    }
    return got;
  }

  int server_fd = -1, client_fd = -1;
  std::unique_ptr<Session> server, client;
  bool server_done = false, client_done = false;
  std::string server_failure, client_failure;

 private:
  static void step(Session& session, int fd, bool& done, std::string& failure) {
    Session::Step s = session.handshake();
    send_output(session, fd);
    if (s.failed()) {
      failure = s.failure;
    } else if (!s.want_read) {
      done = true;
    }
  }
};

std::span<const std::byte> bytes_of(std::string_view s) { return std::as_bytes(std::span(s.data(), s.size())); }

TEST(SessionTest, HandshakeThenDataBothWaysOverASocket) {
  SessionPair pair;
  pair.handshake();
  ASSERT_TRUE(pair.client_done) << pair.client_failure;
  ASSERT_TRUE(pair.server_done) << pair.server_failure;

  ASSERT_TRUE(pair.client->write(bytes_of("hello controller")).ok());
  send_output(*pair.client, pair.client_fd);
  EXPECT_EQ(SessionPair::read_exactly(*pair.server, pair.server_fd, 16), "hello controller");

  // A message larger than one TLS record (16 KiB) and than the read-ahead buffer.
  std::string big(300 * 1024, 'x');
  for (std::size_t i = 0; i < big.size(); i += 4096) big[i] = static_cast<char>('a' + (i / 4096) % 26);
  ASSERT_TRUE(pair.server->write(bytes_of(big)).ok());
  EXPECT_GT(pair.server->output().size(), big.size());  // ciphertext: records add headers and tags
  std::thread sender([&] { send_output(*pair.server, pair.server_fd); });
  std::string got = SessionPair::read_exactly(*pair.client, pair.client_fd, big.size());
  sender.join();
  EXPECT_EQ(got, big);
}

TEST(SessionTest, BothEndsAgreeOnTheExporterAndSeeEachOthersCertificate) {
  SessionPair pair;
  EXPECT_EQ(pair.client->export_keying_material("EXPORTER-testudo-test", "").status().code(),
            StatusCode::kFailedPrecondition);  // before the handshake
  pair.handshake();
  ASSERT_TRUE(pair.client_done && pair.server_done);

  auto a = pair.server->export_keying_material("EXPORTER-testudo-test", "client");
  auto b = pair.client->export_keying_material("EXPORTER-testudo-test", "client");
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(*a, *b);
  EXPECT_NE(*pair.client->export_keying_material("EXPORTER-testudo-test", "engine"), *b);

  EXPECT_EQ(*pair.server->peer_fingerprint(), *fingerprint_of_pem(ids().client.cert_pem));
  EXPECT_EQ(*pair.client->peer_fingerprint(), *fingerprint_of_pem(ids().server.cert_pem));
  auto facts = pair.server->peer_certificate();
  ASSERT_TRUE(facts.ok());
  EXPECT_EQ(facts->subject_cn, "testudo-client");
  EXPECT_EQ(facts->key_fingerprint, *key_fingerprint_of_pem(ids().client.cert_pem));
  auto chain = pair.server->peer_certificate_chain();
  ASSERT_TRUE(chain.ok());
  ASSERT_EQ(chain->size(), 1u);
  EXPECT_EQ(chain->front(), ids().client.cert_pem);
}

TEST(SessionTest, AServerThatIsNotThePinnedOneFailsTheHandshake) {
  // Same CN, another key: only the pin tells them apart (T3).
  SessionPair pair(ids().impostor);
  pair.handshake();
  EXPECT_FALSE(pair.client_done);
  ASSERT_FALSE(pair.client_failure.empty());
  EXPECT_TRUE(pair.client->server_not_pinned());
  EXPECT_FALSE(pair.server->server_not_pinned());  // a server never pins
  EXPECT_FALSE(pair.server_done);
  EXPECT_FALSE(pair.server_failure.empty()) << "the client's alert ends the server's handshake";
  // Nothing was exported on either side.
  EXPECT_FALSE(pair.client->export_keying_material("EXPORTER-testudo-test", "").ok());
}

TEST(SessionTest, APeerThatHangsUpIsAFailureNotAWait) {
  SessionPair pair;
  pair.handshake();
  ASSERT_TRUE(pair.client_done && pair.server_done);
  ::close(pair.client_fd);
  pair.client_fd = -1;
  std::byte buf[64];
  Session::Step step = pair.server->read(buf, sizeof buf);
  EXPECT_EQ(step.bytes, 0u);
  EXPECT_FALSE(step.want_read);
  EXPECT_EQ(step.failure, "connection closed by peer");
}

TEST(SessionTest, ADetachedSessionNeverTouchesTheDescriptorAgain) {
  SessionPair pair;
  pair.handshake();
  ASSERT_TRUE(pair.client_done && pair.server_done);
  ASSERT_TRUE(pair.client->write(bytes_of("late")).ok());
  send_output(*pair.client, pair.client_fd);
  pair.server->detach_socket();
  // The bytes wait in the kernel, but the detached session does not read them.
  std::byte buf[16];
  Session::Step step = pair.server->read(buf, sizeof buf);
  EXPECT_EQ(step.bytes, 0u);
  EXPECT_TRUE(step.failed());
  char peek[4];
  EXPECT_GT(::recv(pair.server_fd, peek, sizeof peek, MSG_PEEK | MSG_DONTWAIT), 0);
}

TEST(SessionTest, OutputIsConsumedPieceByPieceAndTrimmedWhenIdle) {
  SessionPair pair;
  pair.handshake();
  ASSERT_TRUE(pair.client_done && pair.server_done);
  EXPECT_FALSE(pair.client->has_output());
  std::string payload(200 * 1024, 'p');
  ASSERT_TRUE(pair.client->write(bytes_of(payload)).ok());
  const std::size_t total = pair.client->output().size();
  pair.client->consume_output(10);
  EXPECT_EQ(pair.client->output().size(), total - 10);
  pair.client->trim_output(0);  // output waits: nothing is freed
  EXPECT_EQ(pair.client->output().size(), total - 10);
  pair.client->consume_output(total - 10);
  EXPECT_FALSE(pair.client->has_output());
  EXPECT_TRUE(pair.client->output().empty());
}

TEST(SessionTest, BadSettingsAreRefusedWithAReason) {
  auto bad_pin = Context::client({ids().client, "sha256:nothex"});
  ASSERT_FALSE(bad_pin.ok());
  EXPECT_EQ(bad_pin.status().code(), StatusCode::kInvalidArgument);
  ServerOptions old{ids().server};
  old.min_version = "1.1";
  EXPECT_EQ(Context::server(old).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace testudo::tls
