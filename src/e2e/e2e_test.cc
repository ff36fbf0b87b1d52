// Unit tests of the end-to-end pieces: sealed bodies, the replay window, trust roots, engine
// seal statements and pair offers — each attacked the ways a relay could (docs/threat-model.md T9).
#include <gtest/gtest.h>

#include <ctime>
#include <fstream>

#include "base/test_temp_dir.h"
#include "e2e/engine_seal.h"
#include "e2e/pair_offer.h"
#include "e2e/replay_window.h"
#include "e2e/result_key.h"
#include "e2e/roots.h"
#include "e2e/sealed_body.h"
#include "tls/test_pki.h"
#include "wire/byte_io.h"

namespace testudo::e2e {
namespace {

using wire::MessageKind;

std::int64_t now() { return static_cast<std::int64_t>(std::time(nullptr)); }

PairKey random_key() {
  PairKey k;
  EXPECT_TRUE(crypto::fill_random(k.id).ok());
  EXPECT_TRUE(crypto::fill_random(k.key).ok());
  return k;
}

std::vector<SharedBytes> body(std::initializer_list<std::string_view> parts) {
  std::vector<SharedBytes> out;
  for (auto p : parts) out.push_back(SharedBytes::copy_of(p));
  return out;
}

std::string text(const SharedBytes& b) { return b.to_string(); }

struct Sealed {
  SealHeader header;
  std::vector<SharedBytes> segments;  // without the header
};

Sealed seal(const PairKey& key, const SealHeader& h, const SealContext& c, std::span<const SharedBytes> plain) {
  auto out = seal_body(key, h, c, plain);
  EXPECT_TRUE(out.ok()) << out.status().message();
  Sealed s;
  s.header = decode_seal_header(out->at(0).span()).value();
  s.segments.assign(out->begin() + 1, out->end());
  return s;
}

TEST(SealedBodyTest, RoundTripKeepsTheShapeAndHidesTheBytes) {
  const PairKey key = random_key();
  const auto plain = body({"print('MARKER-7f3a')", "", "second segment"});
  SealHeader h;
  h.seq = 7;
  h.code_digest = request_code_digest(MessageKind::kExecute, plain);
  const SealContext c{MessageKind::kExecute, 1, 3, 0};
  Sealed s = seal(key, h, c, plain);
  ASSERT_EQ(s.segments.size(), 3u);
  EXPECT_EQ(s.segments[0].size(), plain[0].size());
  EXPECT_EQ(text(s.segments[0]).find("MARKER"), std::string::npos);
  EXPECT_EQ(s.header.code_digest, crypto::sha256(plain[0].span()));
  auto opened = open_body(key, s.header, c, s.segments);
  ASSERT_TRUE(opened.ok()) << opened.status().message();
  EXPECT_EQ(text(opened->at(0)), "print('MARKER-7f3a')");
  EXPECT_EQ(text(opened->at(2)), "second segment");
}

TEST(SealedBodyTest, AnythingARelayCouldChangeFailsToOpen) {
  const PairKey key = random_key();
  const auto plain = body({"x = 1", "payload"});
  SealHeader h;
  h.seq = 5;
  h.code_digest = request_code_digest(MessageKind::kExecute, plain);
  const SealContext c{MessageKind::kExecute, 0, 2, 0};
  const Sealed s = seal(key, h, c, plain);
  auto refused = [&](const PairKey& k, const SealHeader& hh, const SealContext& cc, std::span<const SharedBytes> segs) {
    auto r = open_body(k, hh, cc, segs);
    EXPECT_EQ(r.status().code(), StatusCode::kPermissionDenied) << r.status().message();
  };
  // Another engine (re-targeting), kind, flags or outcome.
  refused(key, s.header, {MessageKind::kExecute, 0, 3, 0}, s.segments);
  refused(key, s.header, {MessageKind::kApply, 0, 2, 0}, s.segments);
  refused(key, s.header, {MessageKind::kExecute, 1, 2, 0}, s.segments);
  refused(key, s.header, {MessageKind::kExecute, 0, 2, 9}, s.segments);
  // Another sequence number, part or code digest in the header.
  for (auto change : {0, 1, 2}) {
    SealHeader hh = s.header;
    if (change == 0) hh.seq = 6;
    if (change == 1) hh.part = Part::kReply;
    if (change == 2) hh.code_digest[0] ^= std::byte{1};
    refused(key, hh, c, s.segments);
  }
  // A flipped bit, bytes moved between segments, a segment dropped.
  {
    auto segs = s.segments;
    auto flipped = SharedBytes::copy_of(segs[1].span());
    flipped.mutable_span()[3] ^= std::byte{0x20};
    segs[1] = flipped;
    refused(key, s.header, c, segs);
  }
  {
    std::string joined = text(s.segments[0]) + text(s.segments[1]);
    std::vector<SharedBytes> moved{SharedBytes::copy_of(std::string_view(joined).substr(0, 4)),
                                   SharedBytes::copy_of(std::string_view(joined).substr(4))};
    refused(key, s.header, c, moved);
  }
  refused(key, s.header, c, std::span(s.segments).first(1));
  // Another key with the same id (a forged pair key), or another key id.
  PairKey forged = random_key();
  forged.id = key.id;
  refused(forged, s.header, c, s.segments);
  refused(random_key(), s.header, c, s.segments);
  // And the untouched body opens.
  EXPECT_TRUE(open_body(key, s.header, c, s.segments).ok());
}

TEST(SealedBodyTest, HeaderDecoderIsStrict) {
  SealHeader h;
  h.seq = 1;
  h.offer = "offer bytes";
  const SharedBytes good = encode_seal_header(h);
  ASSERT_TRUE(decode_seal_header(good.span()).ok());
  std::string bytes = good.to_string();
  for (std::size_t cut = 0; cut < bytes.size(); ++cut) {
    EXPECT_FALSE(decode_seal_header(crypto::as_bytes(std::string_view(bytes).substr(0, cut))).ok()) << cut;
  }
  EXPECT_FALSE(decode_seal_header(crypto::as_bytes(bytes + "x")).ok());
  std::string bad_magic = bytes;
  bad_magic[0] = 'X';
  EXPECT_FALSE(decode_seal_header(crypto::as_bytes(bad_magic)).ok());
  std::string bad_part = bytes;
  bad_part[4] = 9;
  EXPECT_FALSE(decode_seal_header(crypto::as_bytes(bad_part)).ok());
  SealHeader reply_with_offer;
  reply_with_offer.part = Part::kReply;
  reply_with_offer.offer = "x";
  EXPECT_FALSE(decode_seal_header(encode_seal_header(reply_with_offer).span()).ok());
}

TEST(ReplayWindowTest, EachNumberOnceWithinTheWindow) {
  ReplayWindow w;
  EXPECT_FALSE(w.accept(0));
  EXPECT_TRUE(w.accept(1));
  EXPECT_FALSE(w.accept(1));
  EXPECT_TRUE(w.accept(5));  // 2..4 dropped or late
  EXPECT_TRUE(w.accept(3));  // late but new
  EXPECT_FALSE(w.accept(3));
  EXPECT_FALSE(w.accept(5));
  EXPECT_EQ(w.check(5), ReplayWindow::Verdict::kSeen);
}

// A load-balanced key's numbers reach one engine in the scheduler's order, not the client's:
// one held back behind thousands of later ones (a retry, a dependency) is still new. Only
// past kMaxNumbers does the oldest fall out, refused (never run twice), and a jump that far
// forgets everything below it.
TEST(ReplayWindowTest, ALateNumberIsNewUntilItFallsOutOfTheRememberedRange) {
  ReplayWindow w;
  for (std::uint64_t seq = 2; seq <= 100'000; ++seq) ASSERT_TRUE(w.accept(seq));
  EXPECT_TRUE(w.accept(1));  // held back behind 99,999 later ones: still new
  EXPECT_EQ(w.check(1), ReplayWindow::Verdict::kSeen);
  EXPECT_EQ(w.check(50'000), ReplayWindow::Verdict::kSeen);
  const std::uint64_t far = 100'000 + ReplayWindow::kMaxNumbers;
  EXPECT_TRUE(w.accept(far));
  EXPECT_EQ(w.check(99'999), ReplayWindow::Verdict::kTooOld);  // fell out: refused
  EXPECT_TRUE(w.accept(far - ReplayWindow::kMaxNumbers + 64));  // still remembered: new
  EXPECT_EQ(w.check(far), ReplayWindow::Verdict::kSeen);
  EXPECT_TRUE(w.accept(std::uint64_t{1} << 62));  // a jump far ahead: no giant allocation
  EXPECT_EQ(w.check(far), ReplayWindow::Verdict::kTooOld);
  EXPECT_EQ(w.check(std::uint64_t{1} << 62), ReplayWindow::Verdict::kSeen);
  EXPECT_TRUE(w.accept((std::uint64_t{1} << 62) - 1));
}

struct Actor {
  tls::KeyAndCertificate identity;
  std::string fingerprint;
};

Actor self_signed(std::string_view cn) {
  Actor a;
  a.identity = tls::generate_self_signed(cn).value();
  a.fingerprint = tls::key_fingerprint_of_pem(a.identity.cert_pem).value();
  return a;
}

TEST(RootsTest, PinnedKeysAndCa) {
  testing::TempDir dir;
  auto ca = tls::testing::make_ca("e2e test CA").value();
  const std::string ca_file = dir.path() + "/ca.pem";
  std::ofstream(ca_file) << ca.root.cert_pem;
  const Actor pinned = self_signed("pinned");
  const Actor stranger = self_signed("stranger");
  auto issued = tls::testing::issue(ca, "issued", now() - 60, now() + 3600, 7).value();
  auto expired = tls::testing::issue(ca, "expired", now() - 7200, now() - 3600, 8).value();

  EXPECT_FALSE(Roots::make({"sha256:xyz"}, "").ok());
  auto roots = Roots::make({pinned.fingerprint}, ca_file);
  ASSERT_TRUE(roots.ok()) << roots.status().message();
  EXPECT_EQ(roots->describe(), "CA and pinned");
  EXPECT_TRUE(roots->check(pinned.identity.cert_pem, now(), "engine").ok());
  EXPECT_TRUE(roots->check(issued.cert_pem, now(), "engine").ok());
  auto refused = roots->check(stranger.identity.cert_pem, now(), "engine");
  EXPECT_EQ(refused.status().code(), StatusCode::kPermissionDenied);
  EXPECT_NE(refused.status().message().find("engine sha256:"), std::string::npos) << refused.status().message();
  EXPECT_EQ(roots->check(expired.cert_pem, now(), "engine").status().code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(roots->check("not a certificate", now(), "engine").status().code(), StatusCode::kPermissionDenied);
  auto only_pins = Roots::make({pinned.fingerprint}, "").value();
  EXPECT_FALSE(only_pins.check(issued.cert_pem, now(), "engine").ok());
  EXPECT_TRUE(Roots().empty());
}

TEST(EngineSealTest, ClientAcceptsOnlyATrustedEnginesSignedKey) {
  const Actor engine = self_signed("engine");
  const Actor impostor = self_signed("impostor");
  auto seal = crypto::generate_x25519().value();
  const std::string statement = make_engine_seal_statement(engine.identity, seal.public_key).value();
  const Roots roots = Roots::make({engine.fingerprint}, "").value();

  auto verified = verify_engine_seal_statement(statement, roots, now());
  ASSERT_TRUE(verified.ok()) << verified.status().message();
  EXPECT_EQ(verified->fingerprint, engine.fingerprint);
  EXPECT_EQ(verified->seal_key, seal.public_key);

  // A controller that swaps in its own seal key (keeping the engine's certificate and
  // signature), or its own engine, is refused.
  std::string j = statement;
  const std::string seal_hex = crypto::to_hex(seal.public_key);
  j.replace(j.find(seal_hex), seal_hex.size(), crypto::to_hex(crypto::generate_x25519().value().public_key));
  EXPECT_EQ(verify_engine_seal_statement(j, roots, now()).status().code(), StatusCode::kPermissionDenied);
  const std::string invented = make_engine_seal_statement(impostor.identity, seal.public_key).value();
  EXPECT_EQ(verify_engine_seal_statement(invented, roots, now()).status().code(), StatusCode::kPermissionDenied);
  EXPECT_FALSE(verify_engine_seal_statement("", roots, now()).ok());
  EXPECT_FALSE(verify_engine_seal_statement("{\"v\":1}", roots, now()).ok());
  EXPECT_FALSE(verify_engine_seal_statement(statement, Roots(), now()).ok());
}

TEST(PairOfferTest, OnlyTheEngineProcessItWasMadeForAcceptsIt) {
  const Actor client = self_signed("client");
  const Actor stranger = self_signed("stranger");
  const Actor engine = self_signed("engine");
  auto seal = crypto::generate_x25519().value();
  const VerifiedEngine verified{engine.fingerprint, seal.public_key};
  const PairKey key = random_key();
  const PairKey balanced = random_key();
  const auto client_seal = client_seal_key(client.identity).value();
  const std::string offer = make_pair_offer(client.identity, verified, key, balanced, client_seal.public_key).value();
  const Roots trusts_client = Roots::make({client.fingerprint}, "").value();

  auto accepted = accept_pair_offer(offer, trusts_client, engine.fingerprint, seal, now());
  ASSERT_TRUE(accepted.ok()) << accepted.status().message();
  EXPECT_EQ(accepted->client_fingerprint, client.fingerprint);
  EXPECT_EQ(accepted->key.id, key.id);
  EXPECT_EQ(accepted->key.key, key.key);
  EXPECT_EQ(accepted->balanced_key.id, balanced.id);
  EXPECT_EQ(accepted->balanced_key.key, balanced.key);
  EXPECT_EQ(accepted->client_seal_key, client_seal.public_key);

  // The same offer at another engine, or at a restarted one (a new seal key): refused.
  const Actor other_engine = self_signed("other engine");
  EXPECT_EQ(accept_pair_offer(offer, trusts_client, other_engine.fingerprint, seal, now()).status().code(),
            StatusCode::kPermissionDenied);
  auto restarted = crypto::generate_x25519().value();
  EXPECT_EQ(accept_pair_offer(offer, trusts_client, engine.fingerprint, restarted, now()).status().code(),
            StatusCode::kPermissionDenied);
  // A client the engine does not trust, and an engine that trusts nobody.
  const std::string strangers = make_pair_offer(stranger.identity, verified, random_key(), random_key(),
                                                  client_seal.public_key)
                                      .value();
  auto refused = accept_pair_offer(strangers, trusts_client, engine.fingerprint, seal, now());
  EXPECT_NE(refused.status().message().find("not among the keys"), std::string::npos) << refused.status().message();
  auto nobody = accept_pair_offer(offer, Roots(), engine.fingerprint, seal, now());
  EXPECT_NE(nobody.status().message().find("--trust-client"), std::string::npos);
  // A relay that puts a trusted client's certificate in front of an offer it made itself.
  wire::ByteReader r(crypto::as_bytes(strangers));
  (void)r.str(1 << 20);
  auto rest = r.bytes(r.remaining());
  wire::ByteWriter w;
  w.str(client.identity.cert_pem);
  w.bytes(rest);
  const std::string swapped(reinterpret_cast<const char*>(w.buffer().data()), w.buffer().size());
  auto forged = accept_pair_offer(swapped, trusts_client, engine.fingerprint, seal, now());
  EXPECT_NE(forged.status().message().find("not signed by client"), std::string::npos) << forged.status().message();
  // Truncated offers are refused, never read past their end.
  for (std::size_t cut : {std::size_t{0}, std::size_t{3}, offer.size() / 2, offer.size() - 1}) {
    EXPECT_FALSE(accept_pair_offer(offer.substr(0, cut), trusts_client, engine.fingerprint, seal, now()).ok()) << cut;
  }
}

TEST(ResultKeyTest, EveryProcessOfTheIdentityOpensTheGrantAndNobodyElse) {
  const Actor client = self_signed("client");
  const Actor other = self_signed("other client");
  const Actor engine = self_signed("engine");
  const Actor impostor = self_signed("impostor engine");
  // The seal key is the identity's: a second derivation (another process) gives the same.
  const auto seal = client_seal_key(client.identity).value();
  EXPECT_EQ(client_seal_key(client.identity).value().public_key, seal.public_key);
  EXPECT_NE(client_seal_key(other.identity).value().public_key, seal.public_key);
  // Also when the key file is written encrypted and read back (another PEM, the same key).
  auto encrypted = tls::encrypt_private_key_pem(client.identity.key_pem, "pass").value();
  tls::KeyAndCertificate reread{tls::decrypt_private_key_pem(encrypted, "pass").value(), client.identity.cert_pem};
  EXPECT_EQ(client_seal_key(reread).value().public_key, seal.public_key);

  const Roots roots = Roots::make({engine.fingerprint}, "").value();
  const PairKey id = random_key();
  const ResultKey granted = grant_result_key(engine.identity, client.fingerprint, seal.public_key, id.id).value();
  auto opened = open_result_key(granted.grant, id.id, client.fingerprint, seal, roots, now());
  ASSERT_TRUE(opened.ok()) << opened.status().message();
  EXPECT_EQ(opened->key, granted.key);
  EXPECT_EQ(opened->engine_fingerprint, engine.fingerprint);

  // Another identity (its own seal key and fingerprint) cannot open it.
  const auto other_seal = client_seal_key(other.identity).value();
  EXPECT_EQ(open_result_key(granted.grant, id.id, other.fingerprint, other_seal, roots, now()).status().code(),
            StatusCode::kPermissionDenied);
  // Under another key id (a grant moved to another pair's results): refused.
  EXPECT_FALSE(open_result_key(granted.grant, random_key().id, client.fingerprint, seal, roots, now()).ok());
  // A grant made by someone the client's roots do not trust (the controller, an invented
  // engine), though sealed to the right seal key: refused.
  const ResultKey forged = grant_result_key(impostor.identity, client.fingerprint, seal.public_key, id.id).value();
  auto refused = open_result_key(forged.grant, id.id, client.fingerprint, seal, roots, now());
  EXPECT_NE(refused.status().message().find("not among the keys"), std::string::npos) << refused.status().message();
  for (std::size_t cut : {std::size_t{0}, granted.grant.size() / 2, granted.grant.size() - 1}) {
    EXPECT_FALSE(open_result_key(granted.grant.substr(0, cut), id.id, client.fingerprint, seal, roots, now()).ok());
  }
}

}  // namespace
}  // namespace testudo::e2e
