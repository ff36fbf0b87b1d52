#include "crypto/crypto.h"

#include <gtest/gtest.h>

#include <algorithm>

namespace testudo::crypto {
namespace {

TEST(CryptoTest, Sha256OfAbc) {
  EXPECT_EQ(to_hex(sha256(as_bytes("abc"))),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(CryptoTest, Sha256OfEmpty) {
  EXPECT_EQ(to_hex(sha256({})),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(CryptoTest, HmacSha256Rfc4231Case2) {
  EXPECT_EQ(to_hex(hmac_sha256(as_bytes("Jefe"), as_bytes("what do ya want for nothing?"))),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

TEST(CryptoTest, HmacSha256EmptyKeyAndData) {
  // Well-known value of HMAC-SHA-256("", "").
  EXPECT_EQ(to_hex(hmac_sha256({}, {})),
            "b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad");
}

TEST(CryptoTest, HexRoundTrip) {
  std::vector<std::byte> all;
  for (int i = 0; i < 256; ++i) all.push_back(static_cast<std::byte>(i));
  const std::string hex = to_hex(all);
  EXPECT_EQ(hex.size(), 512u);
  EXPECT_EQ(hex.substr(0, 8), "00010203");
  EXPECT_EQ(hex.substr(hex.size() - 4), "feff");
  auto back = from_hex(hex);
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_EQ(*back, all);

  auto upper = from_hex("DEADbeef");
  ASSERT_TRUE(upper.ok());
  EXPECT_EQ(to_hex(*upper), "deadbeef");

  auto empty = from_hex("");
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());
}

TEST(CryptoTest, BadHexRejected) {
  for (std::string_view bad : {"abc", "0g", "g0", " 00", "00 ", "0x00", "zz", "-1"}) {
    auto r = from_hex(bad);
    EXPECT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << bad;
  }
}

TEST(CryptoTest, ConstantTimeEqual) {
  EXPECT_TRUE(constant_time_equal(as_bytes("secret"), as_bytes("secret")));
  EXPECT_FALSE(constant_time_equal(as_bytes("secret"), as_bytes("secreT")));
  EXPECT_FALSE(constant_time_equal(as_bytes("Secret"), as_bytes("secret")));
  EXPECT_FALSE(constant_time_equal(as_bytes("secret"), as_bytes("secrets")));
  EXPECT_FALSE(constant_time_equal(as_bytes(""), as_bytes("x")));
  EXPECT_TRUE(constant_time_equal(as_bytes(""), as_bytes("")));
}

TEST(CryptoTest, RandomSecretsDiffer) {
  auto a = random_secret();
  auto b = random_secret();
  ASSERT_TRUE(a.ok()) << a.status().to_string();
  ASSERT_TRUE(b.ok()) << b.status().to_string();
  EXPECT_NE(*a, *b);
  EXPECT_NE(*a, Digest{});
}

TEST(CryptoTest, FillRandomFillsLargeBuffers) {
  std::vector<std::byte> buf(1 << 16);
  ASSERT_TRUE(fill_random(buf).ok());
  // 64 KiB of zeros from a CSPRNG would be astonishing.
  EXPECT_TRUE(std::any_of(buf.begin(), buf.end(), [](std::byte b) { return b != std::byte{0}; }));
  EXPECT_TRUE(fill_random({}).ok());
}

TEST(CryptoTest, WipeOverwritesTheSecretAndEmptiesIt) {
  std::string secret = "correct horse battery staple";
  const char* data = secret.data();
  const std::size_t size = secret.size();
  wipe(secret);
  EXPECT_TRUE(secret.empty());
  // The bytes that held the secret are zero now (clear() keeps the buffer, so this reads
  // the string's own storage, not freed memory).
  EXPECT_EQ(secret.data(), data);
  EXPECT_TRUE(std::all_of(data, data + size, [](char c) { return c == '\0'; }));
  std::string empty;
  wipe(empty);
  EXPECT_TRUE(empty.empty());

  char buffer[8] = {'s', 'e', 'c', 'r', 'e', 't', '!', '!'};
  wipe(std::as_writable_bytes(std::span(buffer)));
  EXPECT_TRUE(std::all_of(std::begin(buffer), std::end(buffer), [](char c) { return c == '\0'; }));
}


TEST(CryptoTest, Pbkdf2HmacSha256Rfc7914Vectors) {
  // RFC 7914 section 11 (the first 32 bytes of each 64-byte output).
  EXPECT_EQ(to_hex(pbkdf2_hmac_sha256("passwd", as_bytes("salt"), 1)),
            "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc");
  EXPECT_EQ(to_hex(pbkdf2_hmac_sha256("Password", as_bytes("NaCl"), 80000)),
            "4ddcd8f60b98be21830cee5ef22701f9641a4418d04c0414aeff08876b34ab56");
}

TEST(CryptoTest, Base64Rfc4648Vectors) {
  const std::pair<const char*, const char*> vectors[] = {
      {"", ""}, {"f", "Zg=="}, {"fo", "Zm8="}, {"foo", "Zm9v"}, {"foob", "Zm9vYg=="}, {"fooba", "Zm9vYmE="},
      {"foobar", "Zm9vYmFy"}};
  for (const auto& [plain, encoded] : vectors) {
    EXPECT_EQ(to_base64(as_bytes(plain)), encoded);
    auto decoded = from_base64(encoded);
    ASSERT_TRUE(decoded.ok()) << encoded;
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(decoded->data()), decoded->size()), plain);
  }
  std::vector<std::byte> all;
  for (int i = 0; i < 256; ++i) all.push_back(static_cast<std::byte>(255 - i));
  auto round = from_base64(to_base64(all));
  ASSERT_TRUE(round.ok());
  EXPECT_EQ(*round, all);
}

TEST(CryptoTest, Base64RefusesAnythingButTheCanonicalForm) {
  for (const char* bad : {"Zg", "Zg=", "Zh==", "Zm9=", "Z===", "====", "Zm9v\n", "Zm 9", "Zg==Zg==", "Zm-v", "Zm_v",
                          "Zm=v"}) {
    EXPECT_FALSE(from_base64(bad).ok()) << bad;
  }
}

}  // namespace
}  // namespace testudo::crypto
