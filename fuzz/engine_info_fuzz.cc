// Fuzzes the engine registration facts the controller reads from an engine's signed
// kEngineInfo (auth/registration.h decode_engine_info): signed or not, the bytes are the
// peer's. Properties: no crash; what decodes is a flat object within the bounds, and its
// re-encoding decodes to the same tags.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "auth/registration.h"
#include "fuzz_util.h"

using namespace testudo;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto info = auth::decode_engine_info(text);
  if (!info.ok()) return 0;
  FUZZ_CHECK(info->tags.size() <= auth::kMaxEngineTags);
  for (const auto& [name, value] : info->tags) FUZZ_CHECK(!name.empty() && name.size() <= auth::kMaxEngineTagNameBytes);
  auto again = auth::decode_engine_info(info->info_json);
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(again->tags == info->tags);
  return 0;
}
