// Fuzzes what end-to-end sealing reads from the network (e2e/): the seal header of every
// sealed body (clients and engines decode it; the controller reads its code digest), a pair
// offer (engines), an engine's seal statement and a result-key grant (clients) and opening a
// sealed body. The first
// byte picks the decoder. Properties: no crash; a header that decodes re-encodes to the same
// bytes; no offer or statement made of fuzz bytes is accepted (they need keys the fuzzer does
// not have), nor is a grant; a body opens only as what seals back to the same bytes.
#include <cstddef>
#include <cstdint>
#include <ctime>
#include <string_view>

#include "e2e/engine_seal.h"
#include "e2e/pair_offer.h"
#include "e2e/result_key.h"
#include "e2e/sealed_body.h"
#include "fuzz_util.h"

using namespace testudo;

namespace {

struct Fixture {
  Fixture() {
    auto engine = tls::generate_self_signed("fuzz engine");
    auto client = tls::generate_self_signed("fuzz client");
    if (!engine.ok() || !client.ok()) std::abort();
    engine_fp = tls::key_fingerprint_of_pem(engine->cert_pem).value();
    roots = e2e::Roots::make({tls::key_fingerprint_of_pem(client->cert_pem).value(), engine_fp}, "").value();
    seal = crypto::generate_x25519().value();
    key.id.fill(std::byte{7});
    key.key.fill(std::byte{9});
  }
  std::string engine_fp;
  e2e::Roots roots;
  crypto::X25519KeyPair seal;
  e2e::PairKey key;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const Fixture f;
  if (size == 0) return 0;
  const std::uint8_t selector = data[0] % 5;
  auto bytes = fuzz::as_span(data + 1, size - 1);
  std::string_view text(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  const auto now = static_cast<std::int64_t>(std::time(nullptr));
  switch (selector) {
    case 0: {
      auto header = e2e::decode_seal_header(bytes);
      if (!header.ok()) return 0;
      FUZZ_CHECK(header->offer.size() <= e2e::kMaxOfferBytes);
      FUZZ_CHECK(fuzz::same_bytes(e2e::encode_seal_header(*header).span(), bytes));
      return 0;
    }
    case 1:
      FUZZ_CHECK(!e2e::accept_pair_offer(text, f.roots, f.engine_fp, f.seal, now).ok());
      return 0;
    case 2:
      FUZZ_CHECK(!e2e::verify_engine_seal_statement(text, f.roots, now).ok());
      return 0;
    case 4:
      FUZZ_CHECK(!e2e::open_result_key(text, f.key.id, "sha256:fuzz", f.seal, f.roots, now).ok());
      return 0;
    case 3: {
      // A header, then the rest as one segment: never opens under a key the input cannot know.
      if (bytes.size() < 1) return 0;
      const std::size_t header_size = std::min<std::size_t>(bytes[0] == std::byte{0} ? 0 : 93, bytes.size() - 1);
      auto header = e2e::decode_seal_header(bytes.subspan(1, header_size));
      if (!header.ok()) return 0;
      const SharedBytes segment[] = {SharedBytes::copy_of(bytes.subspan(1 + header_size))};
      auto opened = e2e::open_body(f.key, *header, {}, segment);
      if (!opened.ok()) return 0;
      // Only a body sealed under the fixture's key opens (the seed is one): sealing what it
      // opened to again gives the same bytes and tag.
      auto again = e2e::seal_body(f.key, *header, {}, *opened);
      FUZZ_CHECK(again.ok() && again->size() == 2);
      FUZZ_CHECK(fuzz::same_bytes((*again)[1].span(), segment[0].span()));
      FUZZ_CHECK(e2e::decode_seal_header((*again)[0].span())->tag == header->tag);
      return 0;
    }
  }  return 0;
}
