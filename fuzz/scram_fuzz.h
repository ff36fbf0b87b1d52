// What scram_server_fuzz and make_seeds share: the one user the fuzzed controller knows, the
// channel binding of its "session", and how an input is split into messages.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "auth/login.h"
#include "auth/user_file.h"

namespace testudo::fuzz {

inline constexpr std::string_view kScramUser = "alice";
inline constexpr std::string_view kScramPassword = "fuzz-password-9d2c";

inline auth::ChannelBinding scram_binding() {
  auth::ChannelBinding b;
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = static_cast<std::byte>(i * 13 + 5);
  return b;
}

// The user file of the fuzzed controller: alice at the minimum iteration count.
inline std::shared_ptr<const auth::UserFile> scram_users() {
  static const std::shared_ptr<const auth::UserFile> file = [] {
    auto f = auth::UserFile::create();
    auto v = auth::make_scram_verifier(kScramPassword, auth::kMinScramIterations);
    if (!f.ok() || !v.ok() || !f->set(std::string(kScramUser), auth::UserEntry{*v, {"fuzzers"}, false}).ok()) {
      std::abort();
    }
    return std::make_shared<const auth::UserFile>(std::move(f).value());
  }();
  return file;
}

// An input is messages separated by '\n' (no SCRAM message holds one).
inline std::vector<std::string_view> split_messages(std::string_view input) {
  std::vector<std::string_view> out;
  while (true) {
    const std::size_t nl = input.find('\n');
    out.push_back(input.substr(0, nl));
    if (nl == std::string_view::npos) return out;
    input.remove_prefix(nl + 1);
  }
}

}  // namespace testudo::fuzz
