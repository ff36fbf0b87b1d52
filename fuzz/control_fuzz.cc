// Fuzzes the control payloads the controller itself decodes from authenticated clients
// (wire/control.h): the TaskOptions of load-balanced requests (Envelope::text) and the task
// id lists of abort / get_result / result_status / purge; and the welcome's terms, which clients
// and engines decode from the controller. The first byte selects the decoder (mod 3).
// Properties: no crash; whatever decodes re-encodes to the same bytes.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "fuzz_util.h"
#include "wire/control.h"

using namespace testudo;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  if (data[0] % 3 == 2) {
    auto terms = wire::decode_welcome_terms(text);
    if (!terms.ok()) return 0;
    FUZZ_CHECK(text.empty() || wire::encode_welcome_terms(*terms) == text);
    FUZZ_CHECK(terms->max_message_bytes > 0);
  } else if (data[0] % 3 == 0) {
    auto options = wire::decode_task_options(text);
    if (!options.ok()) return 0;
    std::string encoded = wire::encode_task_options(*options);
    FUZZ_CHECK(encoded == text);
    auto again = wire::decode_task_options(encoded);
    FUZZ_CHECK(again.ok() && *again == *options);
  } else {
    SharedBytes segment = SharedBytes::copy_of(text);
    auto ids = wire::decode_ids(segment);
    if (!ids.ok()) return 0;
    SharedBytes encoded = wire::encode_ids(*ids);
    FUZZ_CHECK(encoded.view() == text);
  }
  return 0;
}
