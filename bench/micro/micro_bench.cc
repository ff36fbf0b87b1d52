// Micro-benchmarks of the per-message hot paths (bench/micro/CMakeLists.txt says how to build).
//   frame/head encode+decode   what every message costs the controller before routing it
//   capability proof           HMAC-SHA-256 per handshake, plus the hello codec
//   AEAD seal/open             AES-256-GCM through OpenSSL EVP, per message size: the cipher
//                              the TLS 1.3 record layer runs (16 KiB records), without TLS framing
//   sealed body                e2e/sealed_body.h: a request sealed by the client and opened by
//                              the engine (header, associated data, allocation: all of it)
//   pair set-up                e2e/: what one client–engine pair costs once, both sides (the
//                              client's offer, the engine's check and result-key grant, the
//                              client's check of the grant); times 256 for 256 engines
//   scheduler                  submit + finished of one load-balanced task (the decision)
//   TLS handshake              a full TLS 1.3 mutual handshake over a socket pair through
//                              tls::Session (both ends, one thread)
//   net round trip / bulk      a message through net::Connection over loopback TLS and back:
//                              one small message (latency incl. thread wake-ups), or a large
//                              one answered by a small one (one-hop bandwidth)
#include <benchmark/benchmark.h>
#include <openssl/evp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <ctime>
#include <cstring>
#include <future>
#include <thread>
#include <vector>

#include "auth/capability.h"
#include "controller/scheduler.h"
#include "crypto/crypto.h"
#include "e2e/engine_seal.h"
#include "e2e/pair_offer.h"
#include "e2e/result_key.h"
#include "e2e/sealed_body.h"
#include "net/net.h"
#include "tls/session.h"
#include "tls/tls.h"
#include "wire/message.h"

namespace {

using namespace testudo;

wire::Envelope typical_envelope() {
  wire::Envelope e;
  e.kind = wire::MessageKind::kApply;
  e.request_id = 123456;
  e.task_id = 987654;
  e.client_id = 3;
  e.engine_id = 1;
  e.targets = {0, 1, 2, 3};
  return e;
}

void BM_FrameHeader(benchmark::State& state) {
  wire::Limits limits;
  wire::FrameHeader h{wire::FrameType::kData, 1u << 16};
  for (auto _ : state) {
    auto bytes = wire::encode_frame_header(h);
    benchmark::DoNotOptimize(bytes);
    auto back = wire::decode_frame_header(std::span<const std::byte, wire::kFrameHeaderBytes>(bytes), limits);
    benchmark::DoNotOptimize(back);
  }
}
BENCHMARK(BM_FrameHeader);

// Head of a message with `range(0)` body segments (the segments themselves are not copied).
void BM_HeadEncodeDecode(benchmark::State& state) {
  wire::Limits limits;
  wire::Envelope e = typical_envelope();
  std::vector<SharedBytes> segments;
  for (int i = 0; i < state.range(0); ++i) segments.push_back(SharedBytes::allocate(64));
  for (auto _ : state) {
    auto head = wire::encode_head(e, segments);
    auto back = wire::decode_head(head, limits);
    benchmark::DoNotOptimize(back);
  }
}
BENCHMARK(BM_HeadEncodeDecode)->Arg(1)->Arg(4)->Arg(64);

void BM_CapabilityProof(benchmark::State& state) {
  auth::Capability cap{};
  crypto::Digest exporter{};
  for (std::size_t i = 0; i < cap.size(); ++i) cap[i] = exporter[i] = std::byte(i);
  for (auto _ : state) {
    auto proof = auth::capability_proof(cap, wire::Role::kEngine, exporter);
    benchmark::DoNotOptimize(proof);
  }
}
BENCHMARK(BM_CapabilityProof);

void BM_HelloCodec(benchmark::State& state) {
  auth::Hello hello;
  hello.role = wire::Role::kClient;
  hello.instance = "0123456789abcdef0123456789abcdef";
  for (auto _ : state) {
    auto text = auth::encode_hello(hello);
    auto back = auth::decode_hello(text);
    benchmark::DoNotOptimize(back);
  }
}
BENCHMARK(BM_HelloCodec);

// AES-256-GCM seal then open of one message of range(0) bytes.
void BM_AeadSealOpen(benchmark::State& state) {
  const std::size_t n = static_cast<std::size_t>(state.range(0));
  std::array<unsigned char, 32> key{};
  std::array<unsigned char, 12> iv{};
  std::array<unsigned char, 16> tag{};
  std::vector<unsigned char> plain(n, 0x5a), sealed(n), opened(n);
  EVP_CIPHER_CTX* enc = EVP_CIPHER_CTX_new();
  EVP_CIPHER_CTX* dec = EVP_CIPHER_CTX_new();
  EVP_EncryptInit_ex(enc, EVP_aes_256_gcm(), nullptr, key.data(), iv.data());
  EVP_DecryptInit_ex(dec, EVP_aes_256_gcm(), nullptr, key.data(), iv.data());
  for (auto _ : state) {
    int len = 0;
    EVP_EncryptInit_ex(enc, nullptr, nullptr, nullptr, iv.data());
    EVP_EncryptUpdate(enc, sealed.data(), &len, plain.data(), static_cast<int>(n));
    EVP_EncryptFinal_ex(enc, sealed.data() + len, &len);
    EVP_CIPHER_CTX_ctrl(enc, EVP_CTRL_GCM_GET_TAG, 16, tag.data());
    EVP_DecryptInit_ex(dec, nullptr, nullptr, nullptr, iv.data());
    EVP_DecryptUpdate(dec, opened.data(), &len, sealed.data(), static_cast<int>(n));
    EVP_CIPHER_CTX_ctrl(dec, EVP_CTRL_GCM_SET_TAG, 16, tag.data());
    if (EVP_DecryptFinal_ex(dec, opened.data() + len, &len) != 1) state.SkipWithError("tag mismatch");
    benchmark::DoNotOptimize(opened.data());
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * static_cast<std::int64_t>(n));
  EVP_CIPHER_CTX_free(enc);
  EVP_CIPHER_CTX_free(dec);
}
BENCHMARK(BM_AeadSealOpen)->Arg(64)->Arg(1024)->Arg(16 * 1024)->Arg(1 << 20);

// SHA-256 of a small body: what the controller and the engine spend on a request's code
// digest (e2e::request_code_digest, the audit log's), per message.
void BM_Sha256(benchmark::State& state) {
  const std::vector<std::byte> data(static_cast<std::size_t>(state.range(0)), std::byte{0x5a});
  for (auto _ : state) benchmark::DoNotOptimize(crypto::sha256(data));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * state.range(0));
}
BENCHMARK(BM_Sha256)->Arg(64)->Arg(1024);

void BM_SealedBody(benchmark::State& state) {
  const std::size_t n = static_cast<std::size_t>(state.range(0));
  e2e::PairKey key;
  key.key.fill(std::byte{3});
  SharedBytes plain = SharedBytes::allocate(n);
  std::memset(plain.data(), 0x5a, n);
  const SharedBytes body[] = {plain};
  std::uint64_t seq = 0;
  for (auto _ : state) {
    e2e::SealHeader header;
    header.seq = ++seq;
    const e2e::SealContext context{wire::MessageKind::kApply, 0, 1, 0, 0};
    auto sealed = e2e::seal_body(key, header, context, body);
    auto decoded = e2e::decode_seal_header((*sealed)[0].span());
    auto opened = e2e::open_body(key, *decoded, context, std::span(*sealed).subspan(1));
    if (!opened.ok()) state.SkipWithError("does not open");
    benchmark::DoNotOptimize(opened->data());
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * static_cast<std::int64_t>(n));
}
BENCHMARK(BM_SealedBody)->Arg(64)->Arg(1024)->Arg(1 << 20)->Arg(100'000'000)->Unit(benchmark::kMicrosecond);

void BM_PairSetUp(benchmark::State& state) {
  const auto client = tls::generate_self_signed("client").value();
  const auto engine = tls::generate_self_signed("engine").value();
  const std::string client_fp = tls::key_fingerprint_of_pem(client.cert_pem).value();
  const std::string engine_fp = tls::key_fingerprint_of_pem(engine.cert_pem).value();
  const auto client_roots = e2e::Roots::make({client_fp}, "").value();
  const auto engine_roots = e2e::Roots::make({engine_fp}, "").value();
  const auto engine_seal = crypto::generate_x25519().value();
  const auto client_seal = e2e::client_seal_key(client).value();
  const std::string statement = e2e::make_engine_seal_statement(engine, engine_seal.public_key).value();
  e2e::PairKey balanced;
  const auto now = static_cast<std::int64_t>(std::time(nullptr));
  for (auto _ : state) {
    // Client: check the engine's statement, make a pair key and its offer.
    auto verified = e2e::verify_engine_seal_statement(statement, engine_roots, now);
    e2e::PairKey key;
    (void)crypto::fill_random(key.id);
    (void)crypto::fill_random(key.key);
    auto offer = e2e::make_pair_offer(client, *verified, key, balanced, client_seal.public_key);
    // Engine: check the offer, grant a result key.
    auto accepted = e2e::accept_pair_offer(*offer, client_roots, engine_fp, engine_seal, now);
    auto grant = e2e::grant_result_key(engine, client_fp, accepted->client_seal_key, key.id);
    // Client: check the grant on the first reply.
    auto opened = e2e::open_result_key(grant->grant, key.id, client_fp, client_seal, engine_roots, now);
    if (!opened.ok()) state.SkipWithError(opened.status().message().c_str());
  }
}
BENCHMARK(BM_PairSetUp)->Unit(benchmark::kMicrosecond);

class NullSink : public controller::SchedulerSink {
 public:
  void dispatch(controller::EngineId engine, controller::TaskId id, const controller::TaskSpec&) override {
    last_engine = engine;
    last_id = id;
  }
  void fail(controller::TaskId, const controller::TaskSpec&, controller::TaskFailure, const std::string&) override {}
  controller::EngineId last_engine = 0;
  controller::TaskId last_id = 0;
};

// One load-balanced task: submit (placement decision, dispatch) and its reply (finished),
// with range(0) engines registered.
void BM_SchedulerSubmitFinished(benchmark::State& state) {
  NullSink sink;
  controller::SchedulerOptions options;
  options.finished_records = 10'000;
  controller::Scheduler scheduler(options, sink, 42);
  for (int e = 0; e < state.range(0); ++e) scheduler.add_engine(static_cast<controller::EngineId>(e));
  auto now = controller::SteadyClock::now();
  for (auto _ : state) {
    controller::TaskSpec spec;
    spec.client_id = 1;
    spec.request_id = 7;
    auto id = scheduler.submit(std::move(spec), now);
    auto done = scheduler.finished(id, sink.last_engine, true, now);
    benchmark::DoNotOptimize(done);
  }
}
BENCHMARK(BM_SchedulerSubmitFinished)->Arg(4)->Arg(64)->Arg(1024);

// --- TLS ---

struct TlsSetup {
  tls::ServerOptions server;
  tls::ClientOptions client;
};

const TlsSetup& tls_setup() {
  static const TlsSetup setup = [] {
    TlsSetup s;
    s.server.identity = tls::generate_self_signed("controller").value();
    s.client.identity = tls::generate_self_signed("client").value();
    s.client.pinned_fingerprint = tls::fingerprint_of_pem(s.server.identity.cert_pem).value();
    return s;
  }();
  return setup;
}

// Both ends of one TLS 1.3 handshake (ECDHE, ECDSA P-256 certificates both ways, pin check),
// driven through tls::Session over a non-blocking Unix socket pair, as net/ drives it: the CPU
// cost of a connection's handshake.
void BM_TlsHandshake(benchmark::State& state) {
  auto server_ctx = tls::Context::server(tls_setup().server).value();
  auto client_ctx = tls::Context::client(tls_setup().client).value();
  auto flush = [](tls::Session& session, int fd) {
    while (session.has_output()) {
      auto out = session.output();
      const ssize_t n = ::send(fd, out.data(), out.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      session.consume_output(static_cast<std::size_t>(n));
    }
    return true;
  };
  for (auto _ : state) {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds) != 0) state.SkipWithError("socketpair");
    auto server = tls::Session::over_socket(server_ctx, fds[0], 64 * 1024).value();
    auto client = tls::Session::over_socket(client_ctx, fds[1], 64 * 1024).value();
    bool client_done = false, server_done = false, failed = false;
    for (int round = 0; round < 20 && !failed && !(client_done && server_done); ++round) {
      if (!client_done) {
        auto step = client->handshake();
        failed |= step.failed() || !flush(*client, fds[1]);
        client_done = !step.failed() && !step.want_read;
      }
      if (!server_done) {
        auto step = server->handshake();
        failed |= step.failed() || !flush(*server, fds[0]);
        server_done = !step.failed() && !step.want_read;
      }
    }
    if (failed || !client_done || !server_done) state.SkipWithError("handshake did not complete");
    server.reset();
    client.reset();
    ::close(fds[0]);
    ::close(fds[1]);
  }
}
BENCHMARK(BM_TlsHandshake)->Unit(benchmark::kMicrosecond);

// A listener that echoes a one-byte message for every message it receives, and a dialled
// connection to it; the loop runs on its own thread.
class Loopback {
 public:
  Loopback() {
    net::ListenOptions lo;
    lo.tls = tls_setup().server;
    listener_ = net::Listener::create(loop_, lo, [this](std::shared_ptr<net::Connection> c) {
      c->set_limits(wire::Limits{});
      auto* raw = c.get();
      c->start({[raw](wire::Message&& m) {
                  wire::Message ack;
                  ack.envelope.kind = m.envelope.kind;
                  ack.envelope.request_id = m.envelope.request_id;
                  raw->send(std::move(ack));
                },
                [](const Status&) {}});
      accepted_.push_back(std::move(c));
    }).value();
    thread_ = std::thread([this] { loop_.run(); });
    std::promise<void> up;
    net::DialOptions d;
    d.host = "127.0.0.1";
    d.port = listener_->port();
    d.tls = tls_setup().client;
    loop_.post([&] {
      net::dial(loop_, d, [&](StatusOr<std::shared_ptr<net::Connection>> c) {
        client_ = std::move(c).value();
        client_->start({[this](wire::Message&&) { reply_->set_value(); }, [](const Status&) {}});
        up.set_value();
      });
    });
    up.get_future().wait();
  }
  ~Loopback() {
    loop_.post([this] {
      client_->close(ok_status());
      for (auto& c : accepted_) c->close(ok_status());
      listener_->close();
      loop_.stop();
    });
    thread_.join();
  }
  // Sends `m` and waits for the echo.
  void round_trip(wire::Message m) {
    std::promise<void> reply;
    reply_ = &reply;
    loop_.post([this, m = std::move(m)]() mutable { client_->send(std::move(m)); });
    reply.get_future().wait();
  }

 private:
  net::EventLoop loop_;
  std::unique_ptr<net::Listener> listener_;
  std::vector<std::shared_ptr<net::Connection>> accepted_;  // loop thread only
  std::shared_ptr<net::Connection> client_;
  std::promise<void>* reply_ = nullptr;
  std::thread thread_;
};

// Message with one body segment of range(0) bytes through one TLS hop, answered by an empty
// message: small sizes measure latency, large ones bandwidth (bytes/s).
void BM_NetRoundTrip(benchmark::State& state) {
  Loopback loopback;
  SharedBytes body = SharedBytes::allocate(static_cast<std::size_t>(state.range(0)));
  std::memset(body.data(), 7, body.size());
  for (auto _ : state) {
    wire::Message m;
    m.envelope.kind = wire::MessageKind::kApply;
    m.segments.push_back(body);
    loopback.round_trip(std::move(m));
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * state.range(0));
}
BENCHMARK(BM_NetRoundTrip)->Arg(64)->Arg(64 << 10)->Arg(16 << 20)->Arg(100'000'000)->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
