// Failed-login rate limiting (docs/threat-model.md T6): failures are counted per peer address
// (the IP, without the port) and per identity (the key fingerprint the peer presented). When either
// reaches its maximum within `window`, that address or identity is locked out for `lockout`
// after its last failure. The table is bounded (T18): a flood of spoofed addresses or fresh
// keys evicts the least recently failed entries instead of growing memory.
//
// Time comes in as an argument (an injected clock), so tests never sleep.
// Threading: not thread-safe; the hub calls it on its loop thread.
#pragma once

#include <chrono>
#include <cstddef>
#include <list>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace testudo::auth {

struct LoginLimiterOptions {
  // Failures of one identity (key fingerprint), from any address, before it is locked out.
  int max_failures_per_identity = 5;
  // Failures from one address, whatever identities it tried, before it is locked out.
  int max_failures_per_address = 20;
  // Failures older than this are forgotten.
  std::chrono::seconds window{60};
  // How long a key stays locked out after its last failure.
  std::chrono::seconds lockout{30};
  // Most addresses + identities remembered at once; beyond it the least recently failed is
  // forgotten.
  std::size_t max_tracked = 10'000;
};

class LoginLimiter {
 public:
  using Clock = std::chrono::steady_clock;

  explicit LoginLimiter(LoginLimiterOptions options = {});

  // Before checking a login: if this address or identity is locked out, how long (rounded up
  // to whole seconds, at least 1) until it may try again; nullopt if it may try now.
  // An empty `identity` (a peer without a certificate) checks only the address.
  std::optional<std::chrono::seconds> locked_out(std::string_view address, std::string_view identity,
                                                 Clock::time_point now);
  // The identity's own lockout only. For identities the controller already trusts: failures
  // of others from the same address (users of one shared host, or an attacker among them)
  // must not shut them out.
  std::optional<std::chrono::seconds> identity_locked_out(std::string_view identity, Clock::time_point now);
  // Counts one failed login against the address and (if not empty) the identity. Reaching a
  // maximum locks that key out until `now + lockout`; its count starts again from zero then,
  // so after the lockout it has a fresh allowance. A failure while locked out extends the lock.
  void record_failure(std::string_view address, std::string_view identity, Clock::time_point now);
  // A login passed: forgets the identity's failures. The address's failures stay (a peer that
  // guesses many identities from one address is still limited).
  void record_success(std::string_view address, std::string_view identity);

  // Addresses + identities remembered now (at most max_tracked).
  std::size_t tracked() const { return entries_.size(); }

 private:
  struct Entry {
    std::vector<Clock::time_point> failures;  // within the window, oldest first; <= max
    std::optional<Clock::time_point> locked_until;
    std::list<std::string>::iterator lru;  // position in lru_ (front: most recent failure)
  };

  static std::string key_of(char kind, std::string_view value);
  std::optional<std::chrono::seconds> remaining(const std::string& key, Clock::time_point now);
  void fail(const std::string& key, int max_failures, Clock::time_point now);

  LoginLimiterOptions options_;
  std::unordered_map<std::string, Entry> entries_;
  std::list<std::string> lru_;
};

}  // namespace testudo::auth
