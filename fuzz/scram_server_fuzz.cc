// Fuzzes both halves of password logins (auth/scram_login.h) with the messages a peer sends
// before it is admitted. The first byte picks the side:
//   even: the controller's half gets the client's messages (client-first, client-final),
//   odd:  the client's half gets a controller's messages (server-first, server-final),
// the rest of the input being those messages separated by '\n'.
// Properties: no crash or hang; an error is a short message that names no password; the
// controller never admits anyone (the proof needs the password and the controller's fresh
// nonce); a claimed identity is "user:" and a valid name; the client never finishes without a
// server signature.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "auth/scram_login.h"
#include "fuzz_util.h"
#include "scram_fuzz.h"

using namespace testudo;

namespace {

void check_error(const Status& st) {
  FUZZ_CHECK(!st.ok());
  FUZZ_CHECK(st.message().size() < 512);
  FUZZ_CHECK(st.message().find(fuzz::kScramPassword) == std::string::npos);
}

void fuzz_server(const std::vector<std::string_view>& messages) {
  auto server = auth::make_scram_login_server(fuzz::scram_users(), fuzz::scram_binding());
  FUZZ_CHECK(server.ok());
  for (std::string_view m : messages) {
    auto step = (*server)->step(m);
    const std::string claimed = (*server)->claimed_identity();
    FUZZ_CHECK(claimed.empty() || (claimed.rfind("user:", 0) == 0 && auth::check_user_name(claimed.substr(5)).ok()));
    if (!step.ok()) {
      check_error(step.status());
      continue;
    }
    FUZZ_CHECK(!step->identity.has_value());
    FUZZ_CHECK(step->reply.rfind("r=", 0) == 0);
    FUZZ_CHECK(step->reply.size() < auth::kMaxScramMessageBytes);
  }
}

void fuzz_client(const std::vector<std::string_view>& messages) {
  // The cost of a hostile iteration count is bounded by the client (kMaxScramIterations), but
  // even that bound is seconds of PBKDF2: not what a fuzzer should spend its time on.
  for (std::string_view m : messages) {
    const std::size_t i = m.find(",i=");
    if (i != std::string_view::npos && m.size() - i > 8) return;  // more than 5 digits
  }
  auto client = auth::make_scram_login_client(std::string(fuzz::kScramUser),
                                              [] { return StatusOr<std::string>(std::string(fuzz::kScramPassword)); });
  FUZZ_CHECK(client.ok());
  auto first = (*client)->start(fuzz::scram_binding());
  FUZZ_CHECK(first.ok());
  bool sent_final = false;
  for (std::string_view m : messages) {
    auto step = (*client)->step(m);
    if (!step.ok()) {
      check_error(step.status());
      FUZZ_CHECK(!(*client)->finished().ok());
      return;
    }
    if (step->has_value()) {
      FUZZ_CHECK(!sent_final);
      FUZZ_CHECK((*step)->find(fuzz::kScramPassword) == std::string::npos);
      sent_final = true;
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0 || size > 3 * auth::kMaxScramMessageBytes) return 0;
  const std::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);
  const auto messages = fuzz::split_messages(input);
  if (data[0] % 2 == 0) {
    fuzz_server(messages);
  } else {
    fuzz_client(messages);
  }
  return 0;
}
