// The transport over real loopback TLS: Connection::send_now from another thread while the
// loop's thread sends, reads and closes the same connection. Every message carries its
// source and sequence number and bytes derived from both, so a lost, reordered or garbled
// message (e.g. two threads in one SSL object at once) fails a check here.
#include "net/net.h"

#include <unistd.h>

#include "net/host_address.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <thread>

namespace testudo::net {
namespace {

using namespace std::chrono_literals;

constexpr std::uint32_t kDirect = 1;  // sent by the other thread (send_now, or posted send)
constexpr std::uint32_t kLoop = 2;    // sent by the loop's thread (send)

Status cancelled_status() { return Status(StatusCode::kCancelled, "test over"); }

std::uint64_t mix(std::uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  return x ^ (x >> 33);
}

// Mostly small messages (the ones send_now takes), some medium, and every 17th one over
// send_now's 256 KiB limit (up to 1.3 MiB: more than one data frame).
std::size_t size_for(std::uint32_t source, std::uint64_t seq) {
  const std::uint64_t r = mix(seq * 4 + source);
  if (seq % 17 == 16) return 300 * 1024 + r % (1024 * 1024);
  if (seq % 5 == 4) return 16 * 1024 + r % (48 * 1024);
  return r % 2048;
}

std::byte byte_at(std::uint32_t source, std::uint64_t seq, std::size_t segment, std::size_t i) {
  return static_cast<std::byte>(mix((seq << 8) ^ (source << 4) ^ segment) + i * 131);
}

wire::Message make_message(std::uint32_t source, std::uint64_t seq, std::size_t size) {
  wire::Message m;
  m.envelope.kind = wire::MessageKind::kTaskOutput;
  m.envelope.set_output_stream(wire::OutputStream::kStdout);
  m.envelope.engine_id = source;
  m.envelope.task_id = seq;
  m.envelope.text = "message " + std::to_string(seq);
  for (std::size_t segment = 0; segment < 2; ++segment) {
    const std::size_t n = segment == 0 ? size : size / 3;
    SharedBytes bytes = SharedBytes::allocate(n);
    for (std::size_t i = 0; i < n; ++i) bytes.data()[i] = byte_at(source, seq, segment, i);
    m.segments.push_back(std::move(bytes));
  }
  return m;
}
wire::Message make_message(std::uint32_t source, std::uint64_t seq) {
  return make_message(source, seq, size_for(source, seq));
}

// Checks that `m` is intact and the next of its source; counts it. On the loop's thread.
struct Receiver {
  std::uint64_t next[3] = {0, 0, 0};
  std::uint64_t total = 0;
  std::string error;  // the first problem seen

  void take(const wire::Message& m) {
    if (!error.empty()) return;
    const std::uint32_t source = m.envelope.engine_id;
    if (source != kDirect && source != kLoop) {
      error = "unknown source " + std::to_string(source);
      return;
    }
    const std::uint64_t seq = m.envelope.task_id;
    if (seq != next[source]) {
      error = "source " + std::to_string(source) + ": got message " + std::to_string(seq) + ", expected " +
              std::to_string(next[source]);
      return;
    }
    if (m.envelope.text != "message " + std::to_string(seq) || m.segments.size() != 2) {
      error = "message " + std::to_string(seq) + ": wrong envelope";
      return;
    }
    for (std::size_t segment = 0; segment < 2; ++segment) {
      const SharedBytes& bytes = m.segments[segment];
      for (std::size_t i = 0; i < bytes.size(); ++i) {
        if (bytes.span()[i] != byte_at(source, seq, segment, i)) {
          error = "message " + std::to_string(seq) + ": byte " + std::to_string(i) + " differs";
          return;
        }
      }
    }
    ++next[source];
    ++total;
  }
};

// A loop on its own thread with a listener and one dialed connection to it.
class NetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto identity = tls::generate_self_signed("net-test");
    ASSERT_TRUE(identity.ok()) << identity.status().to_string();
    auto fingerprint = tls::fingerprint_of_pem(identity->cert_pem);
    ASSERT_TRUE(fingerprint.ok());
    auto client_identity = tls::generate_self_signed("net-test-client");
    ASSERT_TRUE(client_identity.ok());
    loop_thread_ = std::thread([this] { loop_.run(); });

    std::promise<StatusOr<std::shared_ptr<Connection>>> dialed;
    on_loop([&] {
      ListenOptions lo;
      lo.tls.identity = *identity;
      auto l = Listener::create(loop_, lo, [this](std::shared_ptr<Connection> c) {
        c->set_limits(wire::Limits{});  // accepted with pre-authentication limits
        server_ = std::move(c);
      });
      if (!l.ok()) {
        dialed.set_value(l.status());
        return;
      }
      listener_ = std::move(l).value();
      DialOptions d;
      d.host = "127.0.0.1";
      d.port = listener_->port();
      d.tls.identity = *client_identity;
      d.tls.pinned_fingerprint = *fingerprint;
      dial(loop_, d, [&dialed](StatusOr<std::shared_ptr<Connection>> c) { dialed.set_value(std::move(c)); });
    });
    auto client = dialed.get_future().get();
    ASSERT_TRUE(client.ok()) << client.status().to_string();
    client_ = std::move(client).value();
    // The server side is accepted after its handshake, which may end after the client's.
    for (int i = 0; i < 500; ++i) {
      bool have = false;
      on_loop([&] { have = server_ != nullptr; });
      if (have) break;
      std::this_thread::sleep_for(10ms);
    }
    on_loop([&] { ASSERT_NE(server_, nullptr); });
  }

  void TearDown() override {
    close_both();
    on_loop([this] {
      if (listener_) listener_->close();
      listener_.reset();
    });
    loop_.stop();
    if (loop_thread_.joinable()) loop_thread_.join();
    client_.reset();
    server_.reset();
  }

  // Closes both ends: no handler (which may capture a test's locals) runs after this.
  void close_both() {
    on_loop([this] {
      if (client_) client_->close(cancelled_status());
      if (server_) server_->close(cancelled_status());
    });
  }

  // Runs `fn` on the loop's thread and waits for it.
  void on_loop(std::function<void()> fn) {
    std::promise<void> done;
    loop_.post([&] {
      fn();
      done.set_value();
    });
    done.get_future().get();
  }

  // The other thread's way of sending `m` in order: send_now while none of its posted sends
  // is pending, else post. Returns whether send_now took it.
  bool send_in_order(wire::Message m) {
    if (pending_posts_.load(std::memory_order_acquire) == 0 && client_->send_now(m)) return true;
    pending_posts_.fetch_add(1, std::memory_order_relaxed);
    loop_.post([this, c = client_, m = std::move(m)]() mutable {
      c->send(std::move(m));
      pending_posts_.fetch_sub(1, std::memory_order_release);
    });
    return false;
  }

  // Waits (polling the loop) until `done()` holds on the loop's thread, at most `timeout`.
  bool wait_for(std::function<bool()> done, std::chrono::seconds timeout = 120s) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      bool ok = false;
      on_loop([&] { ok = done(); });
      if (ok) return true;
      std::this_thread::sleep_for(5ms);
    }
    return false;
  }

  EventLoop loop_;
  std::thread loop_thread_;
  std::unique_ptr<Listener> listener_;
  std::shared_ptr<Connection> client_;
  std::shared_ptr<Connection> server_;  // on the loop's thread
  std::atomic<int> pending_posts_{0};
};

// Both ways at once: the other thread sends with send_now (falling back to posted sends for
// large messages and a busy connection); the loop's thread sends its own messages on the same
// connection and reads the server's echoes of everything. All arrive intact and in order per
// source, on both sides.
TEST_F(NetTest, SendNowFromAnotherThreadWhileTheLoopSendsAndReads) {
  constexpr std::uint64_t kDirectCount = 3000;
  constexpr std::uint64_t kLoopCount = 3000;
  Receiver at_server;  // loop's thread
  Receiver at_client;  // loop's thread
  std::uint64_t loop_sent = 0;
  Status client_closed = ok_status();
  on_loop([&] {
    server_->start({[&, s = server_.get()](wire::Message&& m) {
                      at_server.take(m);
                      s->send(std::move(m));  // the echo
                    },
                    [](const Status&) {}});
    client_->start({[&](wire::Message&& m) {
                      at_client.take(m);
                      // Each echo makes the loop's thread send one more of its own.
                      if (loop_sent < kLoopCount) client_->send(make_message(kLoop, loop_sent++));
                    },
                    [&](const Status& why) { client_closed = why; }});
    for (int i = 0; i < 16; ++i) client_->send(make_message(kLoop, loop_sent++));
  });

  std::uint64_t taken_now = 0;
  std::thread other([&] {
    for (std::uint64_t seq = 0; seq < kDirectCount; ++seq) {
      // As the engine does, one at a time: the next once the loop has queued a posted one.
      while (pending_posts_.load() > 0) std::this_thread::yield();
      if (send_in_order(make_message(kDirect, seq))) ++taken_now;
    }
  });
  other.join();
  const bool all = wait_for([&] {
    return !at_server.error.empty() || !at_client.error.empty() || !client_->is_open() ||
           at_client.total == kDirectCount + kLoopCount;
  });
  on_loop([&] {
    EXPECT_TRUE(all) << "timed out: server has " << at_server.total << ", client " << at_client.total;
    EXPECT_EQ(at_server.error, "");
    EXPECT_EQ(at_client.error, "");
    EXPECT_TRUE(client_closed.ok()) << client_closed.to_string();
    EXPECT_EQ(at_server.next[kDirect], kDirectCount);
    EXPECT_EQ(at_server.next[kLoop], kLoopCount);
    EXPECT_EQ(at_client.total, kDirectCount + kLoopCount);
  });
  close_both();
  // send_now did take messages itself, and refused the ones over its limit.
  EXPECT_GT(taken_now, 0u);
  EXPECT_LT(taken_now, kDirectCount - kDirectCount / 17 + 1);
}

// The loop's thread closes the connection while the other thread keeps calling send_now:
// no crash, send_now refuses once the connection is closed, and what the server got is an
// intact, in-order prefix.
TEST_F(NetTest, CloseWhileAnotherThreadSendsNow) {
  constexpr std::uint64_t kCloseAfter = 400;
  Receiver at_server;
  std::atomic<bool> closed{false};
  std::atomic<bool> stop{false};
  bool server_closed = false;
  on_loop([&] {
    client_->start({[](wire::Message&&) {}, [&](const Status&) { closed = true; }});
    server_->start({[&](wire::Message&& m) {
                      at_server.take(m);
                      if (at_server.total == kCloseAfter) client_->close(cancelled_status());
                    },
                    [&](const Status&) { server_closed = true; }});
  });
  std::uint64_t after_close = 0;
  std::uint64_t taken_after_close = 0;
  std::thread other([&] {
    for (std::uint64_t seq = 0; !stop; ++seq) {
      const bool was_closed = closed.load();
      // Small messages only, all through send_now when it takes them.
      wire::Message m = make_message(kDirect, seq, mix(seq) % 4096);
      const bool taken = send_in_order(std::move(m));
      if (was_closed) {
        ++after_close;
        if (taken) ++taken_after_close;
        if (after_close >= 2000) break;
      }
    }
  });
  const bool done = wait_for([&] { return server_closed; }, 60s);
  stop = true;
  other.join();
  on_loop([&] {
    EXPECT_TRUE(done);
    EXPECT_EQ(at_server.error, "");
    EXPECT_GE(at_server.total, kCloseAfter);
    EXPECT_FALSE(client_->is_open());
  });
  close_both();
  EXPECT_EQ(taken_after_close, 0u);
}

// send_now on a connection whose peer does not read: the socket fills, send_now leaves the
// rest of a message to the loop and refuses until it is out; once the peer reads, everything
// arrives in order.
TEST_F(NetTest, SendNowLeavesWhatTheSocketRefusesToTheLoop) {
  Receiver at_server;
  on_loop([&] { client_->start({[](wire::Message&&) {}, [](const Status&) {}}); });
  constexpr std::size_t kSize = 200 * 1024;  // under send_now's limit
  std::uint64_t seq = 0;
  bool refused = false;
  // Loopback buffers hold a few MiB at most: send_now must stop taking messages by then.
  for (; seq < 500; ++seq) {
    if (!client_->send_now(make_message(kDirect, seq, kSize))) {
      refused = true;
      break;
    }
  }
  EXPECT_TRUE(refused);
  const std::uint64_t total = seq + 20;
  for (; seq < total; ++seq) send_in_order(make_message(kDirect, seq, kSize));
  on_loop([&] { server_->start({[&](wire::Message&& m) { at_server.take(m); }, [](const Status&) {}}); });
  const bool all = wait_for([&] { return !at_server.error.empty() || at_server.total == total; });
  on_loop([&] {
    EXPECT_TRUE(all) << "server has " << at_server.total << " of " << total;
    EXPECT_EQ(at_server.error, "");
    EXPECT_EQ(at_server.total, total);
  });
  // Idle again: send_now takes the next one itself.
  EXPECT_TRUE(wait_for([&] { return pending_posts_.load() == 0; }));
  EXPECT_TRUE(wait_for([&] { return client_->send_now(make_message(kDirect, total, 100)); }, 10s));
  EXPECT_TRUE(wait_for([&] { return !at_server.error.empty() || at_server.total == total + 1; }));
  on_loop([&] { EXPECT_EQ(at_server.error, ""); });
  close_both();
}

// A heartbeat queued while a large message is being written leaves between its frames and
// arrives first; a task request queued after it keeps its place behind the large message.
// Both are intact (the overtaker's frames did not garble the large one's).
TEST_F(NetTest, HeartbeatOvertakesALargeMessageButATaskRequestDoesNot) {
  std::vector<wire::Message> got;
  on_loop([&] {
    client_->start({[](wire::Message&&) {}, [](const Status&) {}});
    server_->start({[&](wire::Message&& m) { got.push_back(std::move(m)); }, [](const Status&) {}});
    // All three are queued before the writer first runs (it is started by a post).
    client_->send(make_message(kLoop, 0, 8u << 20));  // 8 MiB + 2.7 MiB: 11 data frames
    wire::Message beat;
    beat.envelope.kind = wire::MessageKind::kHeartbeat;
    client_->send(std::move(beat));
    wire::Message execute;
    execute.envelope.kind = wire::MessageKind::kExecute;
    execute.envelope.task_id = 7;
    execute.segments.push_back(SharedBytes::copy_of(std::string_view("x = 1")));
    client_->send(std::move(execute));
  });
  ASSERT_TRUE(wait_for([&] { return got.size() == 3; }, 60s));
  on_loop([&] {
    EXPECT_EQ(got[0].envelope.kind, wire::MessageKind::kHeartbeat);
    EXPECT_EQ(got[1].envelope.kind, wire::MessageKind::kTaskOutput);
    EXPECT_EQ(got[2].envelope.kind, wire::MessageKind::kExecute);
    Receiver check;
    check.take(got[1]);
    EXPECT_EQ(check.error, "");
    EXPECT_EQ(got[2].segments.at(0).to_string(), "x = 1");
  });
  close_both();
}

// A heartbeat queued just before a large message leaves in the same batch, ahead of it: nothing
// is left to overtake with between the large message's frames, and both arrive in order on a
// connection that stays open.
TEST_F(NetTest, AHeartbeatAheadOfALargeMessageInOneBatch) {
  std::vector<wire::Message> got;
  Status closed = ok_status();
  on_loop([&] {
    client_->start({[](wire::Message&&) {}, [&](const Status& why) { closed = why; }});
    server_->start({[&](wire::Message&& m) { got.push_back(std::move(m)); }, [](const Status&) {}});
    wire::Message beat;
    beat.envelope.kind = wire::MessageKind::kHeartbeat;
    client_->send(std::move(beat));
    client_->send(make_message(kLoop, 0, 4u << 20));
  });
  ASSERT_TRUE(wait_for([&] { return got.size() == 2 || !closed.ok(); }, 30s));
  on_loop([&] {
    EXPECT_TRUE(closed.ok()) << closed.to_string();
    ASSERT_EQ(got.size(), 2u);
    EXPECT_EQ(got[0].envelope.kind, wire::MessageKind::kHeartbeat);
    Receiver check;
    check.take(got[1]);
    EXPECT_EQ(check.error, "");
    EXPECT_TRUE(client_->is_open());
  });
  close_both();
}

// Flow control: a paused connection reads nothing more after the message in hand (the peer's
// further messages wait, none is lost), resuming delivers them in order, and closing a paused
// connection ends it cleanly.
TEST_F(NetTest, APausedConnectionReadsNothingUntilResumed) {
  Receiver at_server;
  on_loop([&] {
    client_->start({[](wire::Message&&) {}, [](const Status&) {}});
    server_->start({[&](wire::Message&& m) {
                      at_server.take(m);
                      if (at_server.total == 1) server_->pause_reading(true);  // after the first
                    },
                    [](const Status&) {}});
    for (std::uint64_t seq = 0; seq < 5; ++seq) client_->send(make_message(kLoop, seq, 1000));
  });
  ASSERT_TRUE(wait_for([&] { return at_server.total >= 1; }, 10s));
  std::this_thread::sleep_for(300ms);  // the other four are on the wire by now
  on_loop([&] { EXPECT_EQ(at_server.total, 1u) << "read while paused"; });
  on_loop([&] { server_->pause_reading(false); });
  ASSERT_TRUE(wait_for([&] { return !at_server.error.empty() || at_server.total == 5; }, 10s));
  on_loop([&] {
    EXPECT_EQ(at_server.error, "");
    server_->pause_reading(true);
  });
  close_both();
}

// Relaying, the sending side: a streamed message goes out part by part as parts are pushed; a
// heartbeat sent while it waits for parts overtakes it; a message sent after it keeps its place
// behind it; the receiver gets the whole message, intact.
TEST_F(NetTest, AStreamedMessageLeavesPartByPartAndArrivesWhole) {
  std::vector<wire::Message> got;
  const wire::Message whole = make_message(kLoop, 0, 3u << 20);  // segments of 3 MiB and 1 MiB
  auto rest = std::make_shared<OutgoingStream>(std::vector<std::uint64_t>{whole.segments[0].size(), whole.segments[1].size()});
  on_loop([&] {
    client_->start({[](wire::Message&&) {}, [](const Status&) {}});
    server_->start({[&](wire::Message&& m) { got.push_back(std::move(m)); }, [](const Status&) {}});
    wire::Message first;
    first.envelope = whole.envelope;
    first.segments = {whole.segments[0]};
    client_->send_streamed(std::move(first), rest);
    EXPECT_TRUE(client_->sending_stream());
    wire::Message execute;
    execute.envelope.kind = wire::MessageKind::kExecute;
    execute.segments.push_back(SharedBytes::copy_of(std::string_view("after")));
    client_->send(std::move(execute));
    rest->push(SharedBytes::copy_of(whole.segments[1].span().first(1000)));
    wire::Message beat;
    beat.envelope.kind = wire::MessageKind::kHeartbeat;
    client_->send(std::move(beat));
  });
  ASSERT_TRUE(wait_for([&] { return got.size() == 1; }, 30s));
  std::this_thread::sleep_for(100ms);
  on_loop([&] {
    ASSERT_EQ(got.size(), 1u) << "nothing but the heartbeat before the streamed message ends";
    EXPECT_EQ(got[0].envelope.kind, wire::MessageKind::kHeartbeat);
    const auto second = whole.segments[1].span();
    for (std::size_t off = 1000; off < second.size(); off += 300'000) {
      rest->push(SharedBytes::copy_of(second.subspan(off, std::min<std::size_t>(300'000, second.size() - off))));
    }
    rest->finish();
  });
  ASSERT_TRUE(wait_for([&] { return got.size() == 3; }, 30s));
  on_loop([&] {
    Receiver check;
    check.take(got[1]);
    EXPECT_EQ(check.error, "");
    EXPECT_EQ(got[2].envelope.kind, wire::MessageKind::kExecute);
    EXPECT_FALSE(client_->sending_stream());
  });
  close_both();
}

// An abandoned streamed message is dropped by the receiver, which reads on: the next message
// arrives and the connection stays open. A stream sent on a closed connection is detached.
TEST_F(NetTest, AnAbandonedStreamIsDroppedByTheReceiver) {
  std::vector<wire::Message> got;
  Status closed = ok_status();
  auto rest = std::make_shared<OutgoingStream>(std::vector<std::uint64_t>{5, 1u << 20});
  on_loop([&] {
    client_->start({[](wire::Message&&) {}, [](const Status&) {}});
    server_->start({[&](wire::Message&& m) { got.push_back(std::move(m)); }, [&](const Status& why) { closed = why; }});
    wire::Message first;
    first.envelope.kind = wire::MessageKind::kPush;
    first.segments = {SharedBytes::copy_of(std::string_view("names"))};
    client_->send_streamed(std::move(first), rest);
    rest->push(SharedBytes::copy_of(std::string(4000, 'p')));
    rest->abandon();
    wire::Message execute;
    execute.envelope.kind = wire::MessageKind::kExecute;
    execute.segments.push_back(SharedBytes::copy_of(std::string_view("next")));
    client_->send(std::move(execute));
  });
  ASSERT_TRUE(wait_for([&] { return !got.empty() || !closed.ok(); }, 30s));
  on_loop([&] {
    EXPECT_TRUE(closed.ok()) << closed.to_string();
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].envelope.kind, wire::MessageKind::kExecute);
    EXPECT_EQ(got[0].segments.at(0).to_string(), "next");
  });
  close_both();
  auto late = std::make_shared<OutgoingStream>(std::vector<std::uint64_t>{0, 10});
  on_loop([&] {
    client_->send_streamed(wire::Message{}, late);
    EXPECT_TRUE(late->detached());
    late->push(SharedBytes::copy_of(std::string_view("dropped")));
    EXPECT_TRUE(late->parts().empty());
  });
}

// Relaying, the reading side: an offered message's rest goes to the sink the handler returned,
// and nothing more is read while that sink is backlogged; once it has room, reading goes on and
// the sink gets every byte and the end.
TEST_F(NetTest, AnOfferedMessageIsReadOnlyAsFastAsItsSinkHasRoom) {
  struct HoldingSink final : wire::StreamSink {
    std::vector<SharedBytes> parts;
    std::uint64_t held = 0;
    bool ended = false;
    std::function<void()> room;
    void chunk(std::size_t, SharedBytes bytes) override {
      held += bytes.size();
      parts.push_back(std::move(bytes));
    }
    void end() override { ended = true; }
    void abandon(const Status&) override {}
    bool backlogged() const override { return held >= (2u << 20); }
    void when_room(std::function<void()> fn) override { room = std::move(fn); }
  };
  auto sink = std::make_shared<HoldingSink>();
  std::uint64_t offered_size = 0;
  std::string first_segment;
  const wire::Message whole = make_message(kLoop, 0, 9u << 20);  // segments of 9 MiB and 3 MiB
  on_loop([&] {
    client_->start({[](wire::Message&&) {}, [](const Status&) {}});
    server_->offer_streams(1u << 20);
    server_->start({[](wire::Message&&) {}, [](const Status&) {},
                    [&](const wire::Message& first, std::span<const std::uint64_t> sizes) -> std::shared_ptr<wire::StreamSink> {
                      first_segment = first.segments.at(0).to_string();
                      offered_size = sizes[1];
                      return sink;
                    }});
    client_->send(whole);
  });
  ASSERT_TRUE(wait_for([&] { return sink->backlogged(); }, 30s));
  std::this_thread::sleep_for(300ms);
  std::uint64_t total = 0;
  on_loop([&] {
    EXPECT_EQ(offered_size, whole.segments[1].size());
    EXPECT_EQ(first_segment, whole.segments[0].to_string());
    EXPECT_LE(sink->held, (2u << 20) + (1u << 20)) << "read on while the sink was backlogged";
    EXPECT_FALSE(sink->ended);
  });
  // Drains as a relay would: each time the reader waits for room, empty the sink and say so.
  ASSERT_TRUE(wait_for([&] {
    if (sink->room) {
      total += sink->held;
      sink->held = 0;
      std::exchange(sink->room, nullptr)();
    }
    return sink->ended;
  }, 30s));
  on_loop([&] {
    std::string rest;
    for (const SharedBytes& part : sink->parts) rest += part.to_string();
    EXPECT_EQ(rest, whole.segments[1].to_string());
  });
  close_both();
}

TEST(HostAddressTest, KnowsThisMachinesAddressesFromOthers) {
  EXPECT_TRUE(is_address_of_this_host("127.0.0.1"));
  EXPECT_TRUE(is_address_of_this_host("localhost"));
  char name[256] = {};
  ASSERT_EQ(::gethostname(name, sizeof name - 1), 0);
  EXPECT_TRUE(is_address_of_this_host(name));
  // TEST-NET-1 (RFC 5737) is no interface's address; a name that does not resolve is not ours.
  EXPECT_FALSE(is_address_of_this_host("192.0.2.1"));
  EXPECT_FALSE(is_address_of_this_host("no-such-host.invalid"));
  EXPECT_FALSE(is_address_of_this_host(""));
}

}  // namespace
}  // namespace testudo::net
