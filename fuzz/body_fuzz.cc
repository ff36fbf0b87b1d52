// Fuzzes the body decoders an engine or a client runs on a peer's segment: decode_names
// (kPull), decode_literal_pairs (kPush, literal format) and decode_reply_meta (kTaskReply).
// The first input byte selects the decoder, the rest is the segment. Properties: no crash;
// what decodes re-encodes to the same bytes and decodes to the same value.
#include <cstddef>
#include <cstdint>

#include "fuzz_util.h"
#include "wire/body.h"

using namespace testudo;

namespace {

template <typename Decode, typename Encode>
void round_trip(const SharedBytes& segment, Decode decode, Encode encode) {
  auto value = decode(segment);
  if (!value.ok()) return;
  SharedBytes encoded = encode(*value);
  FUZZ_CHECK(fuzz::same_bytes(encoded.span(), segment.span()));
  auto again = decode(encoded);
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(*again == *value);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  // A copy of exactly the segment bytes, so ASan sees any read past its end.
  SharedBytes segment = SharedBytes::copy_of(fuzz::as_span(data + 1, size - 1));
  switch (data[0] % 3) {
    case 0:
      if (auto names = wire::decode_names(segment); names.ok()) {
        FUZZ_CHECK(names->size() <= wire::kMaxNames);
        for (const auto& name : *names) FUZZ_CHECK(name.size() <= wire::kMaxNameBytes);
      }
      round_trip(segment, wire::decode_names, wire::encode_names);
      break;
    case 1:
      round_trip(segment, wire::decode_literal_pairs, wire::encode_literal_pairs);
      break;
    case 2:
      round_trip(segment, wire::decode_reply_meta, wire::encode_reply_meta);
      break;
  }
  return 0;
}
