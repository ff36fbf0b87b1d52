// Fuzzes the policy parser (auth/policy.h): a policy file is admin input, but it is reloaded
// while the controller serves, so a malformed one must be an error value, never a crash or a
// hang. Properties: no crash; a policy that parses answers every question without crashing,
// and its explanations of denials are bounded.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "auth/policy.h"
#include "fuzz_util.h"

using namespace testudo;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto policy = auth::Policy::parse(text);
  if (!policy.ok()) {
    FUZZ_CHECK(!policy.status().message().empty());
    return 0;
  }
  const auth::Subject subjects[] = {
      {"sha256:0000000000000000000000000000000000000000000000000000000000000000", "alice"},
      {"sha256:1111111111111111111111111111111111111111111111111111111111111111", ""},
      {"", "bob"}};
  const auth::EngineFacts engines[] = {{0, {}}, {3, {{"gpu", "yes"}}}, {7, {{"site", "eu"}, {"gpu", "no"}}}};
  for (const auto& who : subjects) {
    for (int op = 0; op <= static_cast<int>(auth::Operation::kKeyAdmin); ++op) {
      const auto o = static_cast<auth::Operation>(op);
      const bool everywhere = policy->allows_on_every_engine(who, o);
      (void)policy->allows(who, o);
      for (const auto& engine : engines) {
        const bool allowed = policy->allows(who, o, engine);
        FUZZ_CHECK(!everywhere || allowed);
        FUZZ_CHECK(policy->explain_denial(who, o, &engine).size() < 1024);
      }
    }
  }
  return 0;
}
