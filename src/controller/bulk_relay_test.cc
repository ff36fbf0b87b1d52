// The bulk relay over real loopback sockets and a real listener (the one the controller
// uses): both data connections dial its port with a data hello, TLS peers still handshake on
// the same port, and wrong, reused and expired tickets, stalls and early closes fail alone.
#include "controller/bulk_relay.h"

#include <sys/socket.h>

#include <gtest/gtest.h>

#include <future>
#include <thread>

#include "net/net.h"
#include "tls/tls.h"

namespace testudo::controller {
namespace {

using namespace std::chrono_literals;

SharedBytes pattern(std::size_t n, std::uint8_t seed) {
  SharedBytes b = SharedBytes::allocate(n);
  for (std::size_t i = 0; i < n; ++i) b.data()[i] = static_cast<std::byte>((i * 131 + seed) >> 3);
  return b;
}

class BulkRelayTest : public ::testing::Test {
 protected:
  void SetUp() override { loop_thread_ = std::thread([this] { loop_.run(); }); }
  void TearDown() override {
    on_loop([this] {
      if (listener_) listener_->close();
      listener_.reset();
      relay_.reset();
    });
    loop_.stop();
    loop_thread_.join();
  }

  void start(BulkRelayOptions options) {
    auto identity = tls::generate_self_signed("bulk-test");
    ASSERT_TRUE(identity.ok());
    identity_ = *identity;
    on_loop([&] {
      relay_ = std::make_unique<BulkRelay>(loop_, options, [this](const BulkRelay::Done& d) {
        std::lock_guard lock(mutex_);
        done_.push_back(d);
        done_cv_.notify_all();
      });
      net::ListenOptions lo;
      lo.tls.identity = identity_;
      lo.on_data_connection = [this](UniqueFd fd, const net::DataHello& hello, const std::string& peer) {
        relay_->accept(std::move(fd), hello, peer);
      };
      auto l = net::Listener::create(loop_, lo, [this](std::shared_ptr<net::Connection> c) { tls_peers_.push_back(c); });
      ASSERT_TRUE(l.ok());
      listener_ = std::move(l).value();
      port_ = listener_->port();
    });
  }

  void on_loop(std::function<void()> fn) {
    std::promise<void> done;
    loop_.post([&] {
      fn();
      done.set_value();
    });
    done.get_future().get();
  }

  net::Ticket issue(std::uint64_t id, std::uint64_t bytes) {
    StatusOr<net::Ticket> t = internal_error("not run");
    on_loop([&] { t = relay_->issue(id, bytes); });
    EXPECT_TRUE(t.ok()) << t.status().to_string();
    return t.ok() ? *t : net::Ticket{};
  }

  UniqueFd dial(net::DataRole role, const net::Ticket& ticket) {
    auto fd = net::dial_data("127.0.0.1", port_, {role, ticket}, 5s);
    EXPECT_TRUE(fd.ok()) << fd.status().to_string();
    return fd.ok() ? std::move(fd).value() : UniqueFd();
  }

  BulkRelay::Done wait_done(std::uint64_t id) {
    std::unique_lock lock(mutex_);
    const bool got = done_cv_.wait_for(lock, 20s, [&] {
      return std::any_of(done_.begin(), done_.end(), [&](const BulkRelay::Done& d) { return d.transfer == id; });
    });
    EXPECT_TRUE(got) << "transfer " << id << " never reported";
    for (const auto& d : done_) {
      if (d.transfer == id) return d;
    }
    return {};
  }

  BulkRelay::Counts counts() {
    BulkRelay::Counts c;
    on_loop([&] { c = relay_->counts(); });
    return c;
  }

  // Whether the controller closed `fd` (reads EOF or an error within 5 s; bytes before it are
  // read and dropped).
  static bool closed_by_peer(int fd) {
    std::vector<std::byte> buffer(1 << 16);
    for (int i = 0; i < 500; ++i) {
      const ssize_t n = ::recv(fd, buffer.data(), buffer.size(), MSG_DONTWAIT);
      if (n > 0) continue;
      if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) return true;
      std::this_thread::sleep_for(10ms);
    }
    return false;
  }

  net::EventLoop loop_;
  std::thread loop_thread_;
  tls::KeyAndCertificate identity_;
  std::unique_ptr<BulkRelay> relay_;
  std::unique_ptr<net::Listener> listener_;
  std::vector<std::shared_ptr<net::Connection>> tls_peers_;
  std::uint16_t port_ = 0;
  std::mutex mutex_;
  std::condition_variable done_cv_;
  std::vector<BulkRelay::Done> done_;
};

TEST_F(BulkRelayTest, MovesATransferIntactWhicheverEndArrivesFirst) {
  start({});
  const std::vector<SharedBytes> body = {pattern(3 << 20, 1), pattern(17, 2), pattern(9 << 20, 3)};
  const std::vector<std::uint64_t> sizes = {3 << 20, 17, 9 << 20};
  const std::uint64_t total = (3 << 20) + 17 + (9 << 20);
  for (std::uint64_t id : {1, 2}) {
    const net::Ticket ticket = issue(id, total);
    UniqueFd sender, receiver;
    if (id == 1) {
      sender = dial(net::DataRole::kSender, ticket);
      receiver = dial(net::DataRole::kReceiver, ticket);
    } else {
      receiver = dial(net::DataRole::kReceiver, ticket);
      sender = dial(net::DataRole::kSender, ticket);
    }
    std::thread send([&] { EXPECT_TRUE(net::send_segments(sender.get(), body, 5s).ok()); });
    auto got = net::receive_segments(receiver.get(), sizes, 5s);
    send.join();
    ASSERT_TRUE(got.ok()) << got.status().to_string();
    for (std::size_t i = 0; i < body.size(); ++i) EXPECT_TRUE(std::equal(body[i].span().begin(), body[i].span().end(), (*got)[i].span().begin()));
    const BulkRelay::Done d = wait_done(id);
    EXPECT_TRUE(d.status.ok()) << d.status.to_string();
    EXPECT_EQ(d.moved, total);
  }
  const auto c = counts();
  EXPECT_EQ(c.completed, 2u);
  EXPECT_EQ(c.bytes_moved, 2 * total);
  EXPECT_EQ(c.open, 0u);
}

// The hostile test controller's handle (flip_first_byte): exactly one bit of the transfer
// changes, and the rest still moves, so that what catches it downstream is the seal.
TEST_F(BulkRelayTest, AFlippedTransferDiffersInItsFirstBitOnly) {
  start({});
  const std::vector<SharedBytes> body = {pattern(2 << 20, 4), pattern(5, 5)};
  const std::vector<std::uint64_t> sizes = {2 << 20, 5};
  const net::Ticket ticket = issue(7, (2 << 20) + 5);
  on_loop([&] { relay_->flip_first_byte(7); });
  UniqueFd sender = dial(net::DataRole::kSender, ticket);
  UniqueFd receiver = dial(net::DataRole::kReceiver, ticket);
  std::thread send([&] { EXPECT_TRUE(net::send_segments(sender.get(), body, 5s).ok()); });
  auto got = net::receive_segments(receiver.get(), sizes, 5s);
  send.join();
  ASSERT_TRUE(got.ok()) << got.status().to_string();
  EXPECT_EQ((*got)[0].span()[0], body[0].span()[0] ^ std::byte{0x01});
  EXPECT_TRUE(std::equal(body[0].span().begin() + 1, body[0].span().end(), (*got)[0].span().begin() + 1));
  EXPECT_EQ((*got)[1].to_string(), body[1].to_string());
  const BulkRelay::Done d = wait_done(7);
  EXPECT_TRUE(d.status.ok()) << d.status.to_string();
  EXPECT_EQ(d.moved, (2u << 20) + 5);
}

TEST_F(BulkRelayTest, TlsPeersStillHandshakeOnTheSamePort) {
  start({});
  auto client_identity = tls::generate_self_signed("bulk-test-client");
  ASSERT_TRUE(client_identity.ok());
  auto fingerprint = tls::fingerprint_of_pem(identity_.cert_pem);
  ASSERT_TRUE(fingerprint.ok());
  std::promise<Status> dialed;
  on_loop([&] {
    net::DialOptions d;
    d.host = "127.0.0.1";
    d.port = port_;
    d.tls.identity = *client_identity;
    d.tls.pinned_fingerprint = *fingerprint;
    net::dial(loop_, d, [&dialed](StatusOr<std::shared_ptr<net::Connection>> c) {
      if (c.ok()) (*c)->close(unavailable("test over"));
      dialed.set_value(c.status());
    });
  });
  EXPECT_TRUE(dialed.get_future().get().ok());
}

TEST_F(BulkRelayTest, UnknownReusedAndDoubledTicketsAreRefused) {
  start({});
  net::Ticket forged{};
  forged[0] = std::byte{7};
  UniqueFd stranger = dial(net::DataRole::kSender, forged);
  EXPECT_TRUE(closed_by_peer(stranger.get()));

  const net::Ticket ticket = issue(5, 100);
  UniqueFd sender = dial(net::DataRole::kSender, ticket);
  UniqueFd second_sender = dial(net::DataRole::kSender, ticket);  // the same role again
  EXPECT_TRUE(closed_by_peer(second_sender.get()));
  UniqueFd receiver = dial(net::DataRole::kReceiver, ticket);
  const std::vector<SharedBytes> body = {pattern(100, 9)};
  ASSERT_TRUE(net::send_segments(sender.get(), body, 5s).ok());
  const std::uint64_t size = 100;
  ASSERT_TRUE(net::receive_segments(receiver.get(), std::span(&size, 1), 5s).ok());
  EXPECT_TRUE(wait_done(5).status.ok());
  // Spent: a replay of either hello is refused.
  UniqueFd replayed = dial(net::DataRole::kReceiver, ticket);
  EXPECT_TRUE(closed_by_peer(replayed.get()));
  EXPECT_EQ(counts().refused_connections, 3u);
}

TEST_F(BulkRelayTest, ASenderThatClosesEarlyFailsItsTransferAlone) {
  start({});
  const net::Ticket broken = issue(1, 4 << 20);
  const net::Ticket fine = issue(2, 1 << 20);
  UniqueFd sender = dial(net::DataRole::kSender, broken);
  UniqueFd receiver = dial(net::DataRole::kReceiver, broken);
  const std::vector<SharedBytes> half = {pattern(1 << 20, 4)};
  ASSERT_TRUE(net::send_segments(sender.get(), half, 5s).ok());
  sender.reset();
  const std::uint64_t size = 4 << 20;
  auto got = net::receive_segments(receiver.get(), std::span(&size, 1), 5s);
  ASSERT_FALSE(got.ok());
  EXPECT_NE(got.status().message().find("closed after 1048576 of 4194304 bytes"), std::string::npos)
      << got.status().message();
  const BulkRelay::Done d = wait_done(1);
  EXPECT_NE(d.status.message().find("the sender closed its data connection after 1048576 of 4194304 bytes"),
            std::string::npos)
      << d.status.message();

  UniqueFd s2 = dial(net::DataRole::kSender, fine);
  UniqueFd r2 = dial(net::DataRole::kReceiver, fine);
  const std::vector<SharedBytes> body = {pattern(1 << 20, 5)};
  ASSERT_TRUE(net::send_segments(s2.get(), body, 5s).ok());
  const std::uint64_t size2 = 1 << 20;
  EXPECT_TRUE(net::receive_segments(r2.get(), std::span(&size2, 1), 5s).ok());
  EXPECT_TRUE(wait_done(2).status.ok());
}

TEST_F(BulkRelayTest, AStalledTransferAndAMissingEndFailWithTheReason) {
  start({.pair_timeout = 1500ms, .stall_timeout = 500ms});
  const net::Ticket stalls = issue(1, 1 << 20);
  const net::Ticket lonely = issue(2, 10);
  UniqueFd sender = dial(net::DataRole::kSender, stalls);
  UniqueFd receiver = dial(net::DataRole::kReceiver, stalls);
  const std::vector<SharedBytes> part = {pattern(1000, 6)};
  ASSERT_TRUE(net::send_segments(sender.get(), part, 5s).ok());
  const BulkRelay::Done d = wait_done(1);
  EXPECT_NE(d.status.message().find("stalled after 1000 of 1048576 bytes"), std::string::npos) << d.status.message();
  EXPECT_TRUE(closed_by_peer(receiver.get()));

  UniqueFd only_sender = dial(net::DataRole::kSender, lonely);
  const BulkRelay::Done e = wait_done(2);
  EXPECT_EQ(e.status.code(), StatusCode::kDeadlineExceeded);
  EXPECT_NE(e.status.message().find("the receiver never came"), std::string::npos) << e.status.message();
  EXPECT_TRUE(closed_by_peer(only_sender.get()));
  EXPECT_EQ(counts().failed, 2u);
}

TEST_F(BulkRelayTest, CancelEndsACopyingTransferAndTicketsAreBounded) {
  start({.max_transfers = 2});
  const net::Ticket t1 = issue(1, 1 << 20);
  issue(2, 1 << 20);
  on_loop([&] { EXPECT_EQ(relay_->issue(3, 10).status().code(), StatusCode::kResourceExhausted); });
  UniqueFd sender = dial(net::DataRole::kSender, t1);
  UniqueFd receiver = dial(net::DataRole::kReceiver, t1);
  std::this_thread::sleep_for(100ms);  // both ends in: copying (and waiting for bytes)
  on_loop([&] { relay_->cancel(1, "task 1 ended"); });
  const BulkRelay::Done d = wait_done(1);
  EXPECT_EQ(d.status.message(), "task 1 ended");
  on_loop([&] { relay_->cancel(2, "task 2 ended"); });
  EXPECT_EQ(wait_done(2).status.message(), "task 2 ended");
  EXPECT_EQ(counts().open, 0u);
}

TEST_F(BulkRelayTest, AnEndThatComesAfterItsTransferWasCancelledIsLateNotRefused) {
  start({});
  const net::Ticket ticket = issue(1, 100);
  on_loop([&] { relay_->cancel(1, "its task ended"); });
  EXPECT_EQ(wait_done(1).status.message(), "its task ended");
  // Its client had not dialed yet: it does now, in good faith.
  UniqueFd late = dial(net::DataRole::kSender, ticket);
  EXPECT_TRUE(closed_by_peer(late.get()));
  auto c = counts();
  EXPECT_EQ(c.late_connections, 1u);
  EXPECT_EQ(c.refused_connections, 0u);
  // Once: the same ticket again, or a ticket never issued, is refused as ever.
  UniqueFd again = dial(net::DataRole::kSender, ticket);
  EXPECT_TRUE(closed_by_peer(again.get()));
  UniqueFd forged = dial(net::DataRole::kSender, net::Ticket{});
  EXPECT_TRUE(closed_by_peer(forged.get()));
  for (int i = 0; i < 200 && counts().refused_connections < 2; ++i) std::this_thread::sleep_for(10ms);
  c = counts();
  EXPECT_EQ(c.refused_connections, 2u);
  EXPECT_EQ(c.late_connections, 1u);
}

}  // namespace
}  // namespace testudo::controller
