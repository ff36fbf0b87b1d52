// Fuzzes wire::decode_head (the envelope and segment table of every message) under the
// authenticated and the pre-authentication limits. Properties: no crash; a head that
// decodes respects the limits, its outcome is one this build knows, may travel, and comes
// only on a kind that carries one; and when its body is small, encode_head over segments of the
// decoded sizes gives back the input bytes and decodes to the same head again.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "fuzz_util.h"
#include "wire/message.h"

using namespace testudo;

namespace {

constexpr std::uint64_t kMaxRoundTripBody = 1u << 20;  // allocating more per input would slow fuzzing

void check(std::span<const std::byte> in, const wire::Limits& limits) {
  auto head = wire::decode_head(in, limits);
  if (!head.ok()) return;
  FUZZ_CHECK(in.size() <= limits.max_head_bytes);
  const Outcome outcome = head->envelope.outcome();
  FUZZ_CHECK(outcome_from_number(static_cast<std::uint16_t>(outcome)) == outcome);
  FUZZ_CHECK(!is_local(outcome));
  FUZZ_CHECK(outcome == Outcome::kOk || wire::carries_outcome(head->envelope.kind));
  FUZZ_CHECK(head->segment_sizes.size() <= limits.max_segments);
  std::uint64_t total = 0;
  for (std::uint64_t s : head->segment_sizes) {
    FUZZ_CHECK(s <= limits.max_message_bytes);
    total += s;
    FUZZ_CHECK(total <= limits.max_message_bytes);
  }
  if (total >= kMaxRoundTripBody) return;

  std::vector<SharedBytes> segments;
  segments.reserve(head->segment_sizes.size());
  for (std::uint64_t s : head->segment_sizes) segments.push_back(SharedBytes::allocate(s));
  std::vector<std::byte> encoded = wire::encode_head(head->envelope, segments);
  // The encoding is canonical: every field has one representation and nothing may trail.
  FUZZ_CHECK(fuzz::same_bytes(encoded, in));
  auto again = wire::decode_head(encoded, limits);
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(again->envelope == head->envelope);
  FUZZ_CHECK(again->segment_sizes == head->segment_sizes);
  // What decodes, a sender would have let through.
  FUZZ_CHECK(wire::check_outgoing(head->envelope, segments, limits).ok());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const wire::Limits kAuthenticated{};
  static const wire::Limits kPreAuth = wire::Limits::pre_auth();
  auto in = fuzz::as_span(data, size);
  check(in, kAuthenticated);
  check(in, kPreAuth);
  return 0;
}
