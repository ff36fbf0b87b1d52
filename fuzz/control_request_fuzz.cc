// Fuzzes the JSON control requests the controller decodes from authenticated clients
// (controller/requests.h): result queries (kDbQuery) and key administration (kKeyAdmin). The
// first byte selects the decoder. Properties: no crash or exception; what decodes is within
// its bounds.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "controller/requests.h"
#include "fuzz_util.h"

using namespace testudo;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  if (data[0] % 2 == 0) {
    auto q = controller::decode_result_query(text);
    if (!q.ok()) return 0;
    FUZZ_CHECK(q->limit <= controller::kMaxQueryLimit);
    FUZZ_CHECK(q->states.size() <= 6);
  } else {
    auto r = controller::decode_key_admin_request(text);
    if (!r.ok()) return 0;
    FUZZ_CHECK(r->who.size() <= controller::kMaxKeyAdminWhoBytes);
    FUZZ_CHECK(r->action == controller::KeyAdminRequest::Action::kList || !r->who.empty());
  }
  return 0;
}
