// Fuzzes auth::decode_hello, the one message body the controller decodes before a peer has
// authenticated (Envelope::text of a kHello). Properties: no crash; a hello that decodes
// names a client or an engine, has a bounded instance id, and re-encodes to the same text.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "auth/capability.h"
#include "fuzz_util.h"

using namespace testudo;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto hello = auth::decode_hello(text);
  if (!hello.ok()) return 0;
  FUZZ_CHECK(hello->role == wire::Role::kClient || hello->role == wire::Role::kEngine);
  FUZZ_CHECK(hello->instance.size() <= auth::kMaxInstanceBytes);
  std::string encoded = auth::encode_hello(*hello);
  FUZZ_CHECK(encoded == text);
  auto again = auth::decode_hello(encoded);
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(again->role == hello->role && again->instance == hello->instance && again->proof == hello->proof);
  return 0;
}
