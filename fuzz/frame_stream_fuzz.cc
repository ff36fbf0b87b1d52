// Fuzzes wire::MessageAssembler, which every connection runs over the frames a peer sends:
// the input is a byte stream cut into frames as a connection reads it (12 header bytes, then
// as many payload bytes as begin_frame asks for), under the authenticated limits (with a small
// message size, so the fuzzer explores rules rather than allocations) and the
// pre-authentication ones. Properties: no crash; every message handed out respects the
// limits; an overtaking one is of a kind that may overtake and arrives while another message
// is in progress; after an error nothing more is read.
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "fuzz_util.h"
#include "wire/assembler.h"

using namespace testudo;

namespace {

void run(const std::uint8_t* data, std::size_t size, const wire::Limits& limits) {
  wire::MessageAssembler assembler(limits);
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
  return 0;
}
