// Fuzzes wire::decode_frame_header, the first decoder that sees a peer's bytes, under both
// the authenticated limits and the pre-authentication ones. Properties: no crash; a header
// that decodes respects the limits and re-encodes to the same 12 bytes.
#include <array>
#include <cstddef>
#include <cstdint>

#include "fuzz_util.h"
#include "wire/message.h"

using namespace testudo;

namespace {

void check(std::span<const std::byte, wire::kFrameHeaderBytes> in, const wire::Limits& limits) {
  auto h = wire::decode_frame_header(in, limits);
  if (!h.ok()) return;
  FUZZ_CHECK(h->type == wire::FrameType::kHead || h->type == wire::FrameType::kData);
  FUZZ_CHECK(h->length <= limits.max_frame_bytes);
  if (h->type == wire::FrameType::kHead) FUZZ_CHECK(h->length <= limits.max_head_bytes);
  auto again = wire::encode_frame_header(*h);
  FUZZ_CHECK(fuzz::same_bytes(again, in));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // Headers have a fixed size: short inputs are zero-padded so the fuzzer still explores them.
  std::array<std::byte, wire::kFrameHeaderBytes> header{};
  std::memcpy(header.data(), data, std::min(size, header.size()));
  static const wire::Limits kAuthenticated{};
  static const wire::Limits kPreAuth = wire::Limits::pre_auth();
  check(header, kAuthenticated);
  check(header, kPreAuth);
  return 0;
}
