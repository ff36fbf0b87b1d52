// Fuzzes the bulk path's decoders of network bytes (net/data_link.h): the data hello a
// connection may open with (read by the controller's listener before anything else), and the
// transfer sizes a bulk request or reply carries (read by the controller, the engine and the
// client). Selector byte 0: hello, 1: sizes. Properties: no crash; what decodes re-encodes to
// the same bytes; decoded sizes respect the bounds they were decoded under.
#include <cstddef>
#include <cstdint>

#include "fuzz_util.h"
#include "net/data_link.h"

using namespace testudo;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const auto in = fuzz::as_span(data + 1, size - 1);
  if (data[0] % 2 == 0) {
    auto hello = net::decode_data_hello(in);
    if (!hello.ok()) return 0;
    const auto again = net::encode_data_hello(*hello);
    FUZZ_CHECK(fuzz::same_bytes(again, in));
    return 0;
  }
  constexpr std::size_t kMaxSegments = 64;
  constexpr std::uint64_t kMaxBytes = 1ull << 32;
  auto sizes = net::decode_transfer_sizes(in, kMaxSegments, kMaxBytes);
  if (!sizes.ok()) return 0;
  FUZZ_CHECK(!sizes->empty() && sizes->size() <= kMaxSegments);
  std::uint64_t total = 0;
  for (std::uint64_t s : *sizes) total += s;
  FUZZ_CHECK(total <= kMaxBytes);
  FUZZ_CHECK(fuzz::same_bytes(net::encode_transfer_sizes(*sizes).span(), in));
  return 0;
}
