// Fuzzes auth::parse_connection_info, the parser behind load_connection_file. A connection
// file is local, but it may come from a shared or copied directory, and a parser must report
// bad input, never crash. Properties: no crash; what parses is well-formed.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "auth/connection_file.h"
#include "fuzz_util.h"

using namespace testudo;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto info = auth::parse_connection_info(text);
  if (!info.ok()) return 0;
  FUZZ_CHECK(info->role == wire::Role::kClient || info->role == wire::Role::kEngine);
  FUZZ_CHECK(info->port != 0);
  FUZZ_CHECK(info->fingerprint.rfind("sha256:", 0) == 0);
  return 0;
}
