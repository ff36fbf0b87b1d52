#include "crypto/aead.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <thread>

#include "crypto/crypto.h"

namespace testudo::crypto {
namespace {

std::vector<std::byte> hex(std::string_view h) { return from_hex(h).value(); }

template <std::size_t N>
std::array<std::byte, N> hex_array(std::string_view h) {
  auto v = hex(h);
  std::array<std::byte, N> a{};
  EXPECT_EQ(v.size(), N);
  std::copy_n(v.begin(), N, a.begin());
  return a;
}

// McGrew & Viega, "The Galois/Counter Mode of Operation", test case 16 (AES-256, 60-byte
// plaintext, 20-byte associated data) — the vector NIST's GCM validation uses.
struct Case16 {
  AeadKey key = hex_array<32>("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308");
  AeadNonce nonce = hex_array<12>("cafebabefacedbaddecaf888");
  std::vector<std::byte> aad = hex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
  std::vector<std::byte> plaintext = hex(
      "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657"
      "ba637b39");
  std::vector<std::byte> ciphertext = hex(
      "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0a"
      "bcc9f662");
  AeadTag tag = hex_array<16>("76fc6ece0f4e1768cddf8853bb2d551b");
};

TEST(AeadTest, MatchesTheGcmSpecificationVector) {
  Case16 c;
  std::vector<std::byte> out(c.plaintext.size());
  const std::span<const std::byte> in[] = {c.plaintext};
  const std::span<std::byte> outs[] = {out};
  auto tag = aead_seal(c.key, c.nonce, c.aad, in, outs);
  ASSERT_TRUE(tag.ok()) << tag.status().message();
  EXPECT_EQ(out, c.ciphertext);
  EXPECT_EQ(*tag, c.tag);
}

TEST(AeadTest, PiecesAreOneMessage) {
  // The same vector split into three pieces (one empty) gives the same bytes and tag.
  Case16 c;
  std::vector<std::byte> out(c.plaintext.size());
  std::span<const std::byte> p(c.plaintext);
  std::span<std::byte> o(out);
  const std::span<const std::byte> in[] = {p.first(7), p.subspan(7, 0), p.subspan(7)};
  const std::span<std::byte> outs[] = {o.first(7), o.subspan(7, 0), o.subspan(7)};
  auto tag = aead_seal(c.key, c.nonce, c.aad, in, outs);
  ASSERT_TRUE(tag.ok());
  EXPECT_EQ(out, c.ciphertext);
  EXPECT_EQ(*tag, c.tag);

  std::vector<std::byte> back(out.size());
  std::span<std::byte> b(back);
  const std::span<const std::byte> cin[] = {std::span<const std::byte>(out).first(30), std::span<const std::byte>(out).subspan(30)};
  const std::span<std::byte> bouts[] = {b.first(30), b.subspan(30)};
  ASSERT_TRUE(aead_open(c.key, c.nonce, c.aad, cin, bouts, *tag).ok());
  EXPECT_EQ(back, c.plaintext);
}

TEST(AeadTest, AnyChangeFailsAuthentication) {
  Case16 c;
  std::vector<std::byte> out(c.plaintext.size());
  const std::span<const std::byte> cin[] = {c.ciphertext};
  const std::span<std::byte> outs[] = {out};
  ASSERT_TRUE(aead_open(c.key, c.nonce, c.aad, cin, outs, c.tag).ok());
  EXPECT_EQ(out, c.plaintext);

  auto expect_refused = [&](const AeadKey& key, const AeadNonce& nonce, std::span<const std::byte> aad,
                            std::span<const std::byte> ciphertext, const AeadTag& tag) {
    std::vector<std::byte> sink(ciphertext.size());
    const std::span<const std::byte> in[] = {ciphertext};
    const std::span<std::byte> o[] = {sink};
    Status st = aead_open(key, nonce, aad, in, o, tag);
    EXPECT_EQ(st.code(), StatusCode::kPermissionDenied);
    EXPECT_EQ(st.message(), "sealed body failed authentication");
  };
  auto flipped = c.ciphertext;
  flipped[17] ^= std::byte{1};
  expect_refused(c.key, c.nonce, c.aad, flipped, c.tag);
  auto aad = c.aad;
  aad.back() ^= std::byte{0x80};
  expect_refused(c.key, c.nonce, aad, c.ciphertext, c.tag);
  auto nonce = c.nonce;
  nonce[11] ^= std::byte{1};
  expect_refused(c.key, nonce, c.aad, c.ciphertext, c.tag);
  auto key = c.key;
  key[0] ^= std::byte{1};
  expect_refused(key, c.nonce, c.aad, c.ciphertext, c.tag);
  auto tag = c.tag;
  tag[15] ^= std::byte{1};
  expect_refused(c.key, c.nonce, c.aad, c.ciphertext, tag);
  expect_refused(c.key, c.nonce, c.aad, std::span(c.ciphertext).first(59), c.tag);  // truncated
}

TEST(AeadTest, PiecesOfTheWrongSizeAreRefused) {
  Case16 c;
  std::vector<std::byte> out(c.plaintext.size() - 1);
  const std::span<const std::byte> in[] = {c.plaintext};
  const std::span<std::byte> outs[] = {out};
  EXPECT_FALSE(aead_seal(c.key, c.nonce, c.aad, in, outs).ok());
}

// aead_seal/aead_open keep a few keyed contexts per thread (aead.cc): whatever order keys,
// nonces and failures come in, each message must be exactly the one a fresh context makes.
TEST(AeadTest, ReusedContextsNeverMixKeysNoncesOrFailures) {
  Case16 c;
  auto seal_case = [&](const AeadKey& key, const AeadNonce& nonce) {
    std::vector<std::byte> out(c.plaintext.size());
    const std::span<const std::byte> in[] = {c.plaintext};
    const std::span<std::byte> outs[] = {out};
    auto tag = aead_seal(key, nonce, c.aad, in, outs);
    EXPECT_TRUE(tag.ok());
    return std::pair(out, tag.ok() ? *tag : AeadTag{});
  };
  // More keys than the cache holds, in turn, each with two nonces: every (key, nonce) gives
  // the same bytes each time, and no two give the same.
  std::vector<AeadKey> keys(20, c.key);
  for (std::size_t i = 1; i < keys.size(); ++i) keys[i][31] ^= static_cast<std::byte>(i);
  auto other_nonce = c.nonce;
  other_nonce[0] ^= std::byte{0x55};
  std::vector<std::pair<std::vector<std::byte>, AeadTag>> first;
  for (const AeadKey& key : keys) {
    first.push_back(seal_case(key, c.nonce));
    first.push_back(seal_case(key, other_nonce));
  }
  EXPECT_EQ(first[0].first, c.ciphertext);
  EXPECT_EQ(first[0].second, c.tag);
  for (int round = 0; round < 3; ++round) {
    for (std::size_t i = keys.size(); i-- > 0;) {  // the other way round: every lookup misses or hits anew
      EXPECT_EQ(seal_case(keys[i], other_nonce), first[2 * i + 1]) << "key " << i;
      EXPECT_EQ(seal_case(keys[i], c.nonce), first[2 * i]) << "key " << i;
    }
  }
  for (std::size_t i = 0; i < first.size(); ++i) {
    for (std::size_t j = i + 1; j < first.size(); ++j) EXPECT_NE(first[i].second, first[j].second);
  }
  // A refused open and a failed seal under a key leave it sealing and opening correctly.
  std::vector<std::byte> sink(c.ciphertext.size());
  const std::span<const std::byte> cin[] = {c.ciphertext};
  const std::span<std::byte> souts[] = {sink};
  auto bad_tag = c.tag;
  bad_tag[0] ^= std::byte{1};
  EXPECT_EQ(aead_open(c.key, c.nonce, c.aad, cin, souts, bad_tag).code(), StatusCode::kPermissionDenied);
  std::vector<std::byte> short_out(c.plaintext.size() - 1);
  const std::span<const std::byte> pin[] = {c.plaintext};
  const std::span<std::byte> short_outs[] = {short_out};
  EXPECT_FALSE(aead_seal(c.key, c.nonce, c.aad, pin, short_outs).ok());
  EXPECT_EQ(seal_case(c.key, c.nonce), first[0]);
  ASSERT_TRUE(aead_open(c.key, c.nonce, c.aad, cin, souts, c.tag).ok());
  EXPECT_EQ(sink, c.plaintext);
  // Another thread (contexts of its own) agrees.
  std::pair<std::vector<std::byte>, AeadTag> elsewhere;
  std::thread([&] { elsewhere = seal_case(keys[7], c.nonce); }).join();
  EXPECT_EQ(elsewhere, first[14]);
}

TEST(AeadTest, AStreamSealsTheSameBytesAndTagAsOneCall) {
  Case16 c;
  // The specification's vector through the stream in uneven pieces (one empty).
  auto stream = AeadSealStream::start(c.key, c.nonce, c.aad);
  ASSERT_TRUE(stream.ok()) << stream.status().message();
  std::vector<std::byte> out(c.plaintext.size());
  std::size_t at = 0;
  for (std::size_t n : {std::size_t{1}, std::size_t{0}, std::size_t{17}, c.plaintext.size() - 18}) {
    ASSERT_TRUE(stream->update(std::span(c.plaintext).subspan(at, n), std::span(out).subspan(at, n)).ok());
    at += n;
  }
  auto tag = stream->finish();
  ASSERT_TRUE(tag.ok());
  EXPECT_EQ(out, c.ciphertext);
  EXPECT_EQ(*tag, c.tag);
  EXPECT_FALSE(stream->finish().ok()) << "a spent stream";
  // A larger body: the same as aead_seal, and it opens.
  std::vector<std::byte> body(3 * 1024 * 1024 + 5);
  for (std::size_t i = 0; i < body.size(); ++i) body[i] = static_cast<std::byte>(i * 31 + 7);
  std::vector<std::byte> whole(body.size()), streamed(body.size());
  const std::span<const std::byte> in[] = {body};
  const std::span<std::byte> outs[] = {whole};
  auto one_call = aead_seal(c.key, c.nonce, c.aad, in, outs);
  ASSERT_TRUE(one_call.ok());
  auto s2 = AeadSealStream::start(c.key, c.nonce, c.aad);
  ASSERT_TRUE(s2.ok());
  for (std::size_t off = 0; off < body.size(); off += 1 << 20) {
    const std::size_t n = std::min<std::size_t>(1 << 20, body.size() - off);
    ASSERT_TRUE(s2->update(std::span(body).subspan(off, n), std::span(streamed).subspan(off, n)).ok());
  }
  auto tag2 = s2->finish();
  ASSERT_TRUE(tag2.ok());
  EXPECT_EQ(streamed, whole);
  EXPECT_EQ(*tag2, *one_call);
  std::vector<std::byte> back(body.size());
  const std::span<const std::byte> cin[] = {streamed};
  const std::span<std::byte> bouts[] = {back};
  ASSERT_TRUE(aead_open(c.key, c.nonce, c.aad, cin, bouts, *tag2).ok());
  EXPECT_EQ(back, body);
}

TEST(HkdfTest, Rfc5869TestCase1) {
  auto okm = hkdf_sha256(hex("0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b"), hex("000102030405060708090a0b0c"),
                         std::string_view("\xf0\xf1\xf2\xf3\xf4\xf5\xf6\xf7\xf8\xf9", 10));
  ASSERT_TRUE(okm.ok());
  // The first 32 of the RFC's 42 output bytes.
  EXPECT_EQ(to_hex(*okm), "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf");
}

TEST(HkdfTest, Rfc5869TestCase3WithoutSalt) {
  auto okm = hkdf_sha256(hex("0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b"), {}, "");
  ASSERT_TRUE(okm.ok()) << okm.status().message();
  EXPECT_EQ(to_hex(*okm), "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d");
}

TEST(X25519Test, Rfc7748AlicesPublicKey) {
  auto alice = x25519_from_private(hex_array<32>("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"));
  ASSERT_TRUE(alice.ok());
  EXPECT_EQ(to_hex(alice->public_key), "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
  // A box sealed to it opens with the pair rebuilt from the private bytes alone.
  auto box = seal_box(alice->public_key, "i", as_bytes("to alice")).value();
  EXPECT_TRUE(open_box(*alice, "i", box).ok());
}

TEST(SealedBoxTest, OnlyTheRecipientOpensItForTheSameInfo) {
  auto alice = generate_x25519().value();
  auto mallory = generate_x25519().value();
  const std::string secret = "a pair key of thirty-two bytes!!";
  auto box = seal_box(alice.public_key, "testudo-test-v1|alice", as_bytes(secret));
  ASSERT_TRUE(box.ok()) << box.status().message();
  EXPECT_EQ(box->size(), secret.size() + kSealedBoxOverhead);
  // The plaintext does not appear in the box.
  EXPECT_EQ(std::string_view(reinterpret_cast<const char*>(box->data()), box->size()).find("thirty"), std::string::npos);

  auto opened = open_box(alice, "testudo-test-v1|alice", *box);
  ASSERT_TRUE(opened.ok()) << opened.status().message();
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(opened->data()), opened->size()), secret);

  EXPECT_EQ(open_box(mallory, "testudo-test-v1|alice", *box).status().code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(open_box(alice, "testudo-test-v1|bob", *box).status().message(), "sealed box does not open");
  for (std::size_t i : {std::size_t{0}, std::size_t{31}, std::size_t{32}, box->size() - 1}) {
    auto altered = *box;
    altered[i] ^= std::byte{4};
    EXPECT_EQ(open_box(alice, "testudo-test-v1|alice", altered).status().code(), StatusCode::kPermissionDenied) << i;
  }
  EXPECT_EQ(open_box(alice, "testudo-test-v1|alice", std::span(*box).first(kSealedBoxOverhead - 1)).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(SealedBoxTest, TwoBoxesOfTheSameBytesDiffer) {
  auto alice = generate_x25519().value();
  auto a = seal_box(alice.public_key, "i", as_bytes("same")).value();
  auto b = seal_box(alice.public_key, "i", as_bytes("same")).value();
  EXPECT_NE(a, b);  // a fresh ephemeral key per box
}

TEST(SealedBoxTest, SmallOrderRecipientKeyIsRefused) {
  // The all-zero point has small order: every X25519 with it gives the all-zero secret, so a
  // box "sealed" to it would be readable by anyone (RFC 7748 section 6.1).
  X25519Public zero{};
  EXPECT_EQ(seal_box(zero, "i", as_bytes("x")).status().code(), StatusCode::kPermissionDenied);
}

}  // namespace
}  // namespace testudo::crypto
