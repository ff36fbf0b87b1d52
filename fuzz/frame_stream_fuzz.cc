// Fuzzes wire::MessageAssembler, which every connection runs over the frames a peer sends:
// the input is a byte stream cut into frames as a connection reads it (12 header bytes, then
// as many payload bytes as begin_frame asks for), under the authenticated limits (with a small
// message size, so the fuzzer explores rules rather than allocations) and the
// pre-authentication ones. Properties: no crash; every message handed out respects the
// limits; an overtaking one is of a kind that may overtake and arrives while another message
// is in progress; after an error nothing more is read. A third run offers streams (a relay's
// reading side) and accepts or declines each offer by the input's first byte: a streamed
// message's sink gets its segments after the first in order, never more than announced, every
// byte of them before its end, and an end or an abandonment once.
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "fuzz_util.h"
#include "wire/assembler.h"

using namespace testudo;

namespace {

// Checks what a streamed message's sink is told against the sizes it was offered.
struct CheckingSink final : wire::StreamSink {
  std::vector<std::uint64_t> sizes;
  std::vector<std::uint64_t> got;
  std::size_t segment = 1;
  bool over = false;
  void chunk(std::size_t s, SharedBytes bytes) override {
    FUZZ_CHECK(!over);
    FUZZ_CHECK(s >= segment && s < sizes.size() && !bytes.empty());
    segment = s;
    got[s] += bytes.size();
    FUZZ_CHECK(got[s] <= sizes[s]);
  }
  void end() override {
    FUZZ_CHECK(!over);
    over = true;
    for (std::size_t i = 1; i < sizes.size(); ++i) FUZZ_CHECK(got[i] == sizes[i]);
  }
  void abandon(const Status&) override {
    FUZZ_CHECK(!over);
    over = true;
  }
};

void run(const std::uint8_t* data, std::size_t size, const wire::Limits& limits, std::uint64_t stream_from = 0) {
  wire::MessageAssembler assembler(limits);
  assembler.offer_streams(stream_from);
  const bool accept = size > 0 && (data[0] & 1) != 0;
  std::size_t at = 0;
  while (size - at >= wire::kFrameHeaderBytes) {
    std::array<std::byte, wire::kFrameHeaderBytes> header;
    std::memcpy(header.data(), data + at, header.size());
    at += header.size();
    const bool was_in_message = assembler.in_message();
    auto to = assembler.begin_frame(header);
    if (!to.ok()) return;
    FUZZ_CHECK(to->size() <= limits.max_frame_bytes);
    if (size - at < to->size()) return;  // the peer stopped mid-frame
    if (!to->empty()) std::memcpy(to->data(), data + at, to->size());
    at += to->size();
    auto done = assembler.end_frame();
    if (!done.ok()) return;
    if (const wire::Message* first = assembler.offer()) {
      FUZZ_CHECK(stream_from > 0 && !*done && first->segments.size() == 1);
      std::shared_ptr<CheckingSink> sink;
      if (accept) {
        sink = std::make_shared<CheckingSink>();
        sink->sizes = assembler.offer_sizes();
        sink->got.assign(sink->sizes.size(), 0);
      }
      assembler.answer_offer(sink);
    }
    if (!*done) continue;
    const wire::Message& m = **done;
    FUZZ_CHECK(m.segments.size() <= limits.max_segments);
    std::uint64_t total = 0;
    for (const SharedBytes& s : m.segments) total += s.size();
    FUZZ_CHECK(total <= limits.max_message_bytes);
    // Still inside the message it overtook: then it was an overtaking one.
    if (was_in_message && assembler.in_message()) FUZZ_CHECK(wire::may_overtake(m.envelope.kind));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  wire::Limits small;
  small.max_message_bytes = 1u << 20;
  small.max_frame_bytes = 64u << 10;
  run(data, size, small);
  run(data, size, wire::Limits::pre_auth());
  run(data, size, small, 64);
  return 0;
}
