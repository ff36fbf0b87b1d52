#include "auth/login_limiter.h"

#include <algorithm>

namespace testudo::auth {
namespace {

// Keys come from peers (an address, a fingerprint): cap what one entry can hold.
constexpr std::size_t kMaxKeyBytes = 256;

}  // namespace

LoginLimiter::LoginLimiter(LoginLimiterOptions options) : options_(options) {
  options_.max_failures_per_identity = std::max(1, options_.max_failures_per_identity);
  options_.max_failures_per_address = std::max(1, options_.max_failures_per_address);
  options_.max_tracked = std::max<std::size_t>(1, options_.max_tracked);
}

std::string LoginLimiter::key_of(char kind, std::string_view value) {
  std::string key(1, kind);
  key += ':';
  key += value.substr(0, kMaxKeyBytes);
  return key;
}

std::optional<std::chrono::seconds> LoginLimiter::remaining(const std::string& key,
                                                            Clock::time_point now) {
  auto it = entries_.find(key);
  if (it == entries_.end() || !it->second.locked_until) return std::nullopt;
  Entry& e = it->second;
  if (*e.locked_until <= now) {
    e.locked_until.reset();  // lock over; failures were cleared when it was set
    if (e.failures.empty()) {
      lru_.erase(e.lru);
      entries_.erase(it);
    }
    return std::nullopt;
  }
  const auto left = *e.locked_until - now;
  auto secs = std::chrono::ceil<std::chrono::seconds>(left);
  return std::max(secs, std::chrono::seconds(1));
}

std::optional<std::chrono::seconds> LoginLimiter::locked_out(std::string_view address,
                                                             std::string_view identity,
                                                             Clock::time_point now) {
  std::optional<std::chrono::seconds> out = remaining(key_of('a', address), now);
  if (!identity.empty()) {
    if (auto id = remaining(key_of('i', identity), now); id && (!out || *id > *out)) out = id;
  }
  return out;
}

std::optional<std::chrono::seconds> LoginLimiter::identity_locked_out(std::string_view identity, Clock::time_point now) {
  if (identity.empty()) return std::nullopt;
  return remaining(key_of('i', identity), now);
}

void LoginLimiter::fail(const std::string& key, int max_failures, Clock::time_point now) {
  auto it = entries_.find(key);
  if (it == entries_.end()) {
    // Make room first: the least recently failed key is forgotten (T18).
    while (entries_.size() >= options_.max_tracked && !lru_.empty()) {
      entries_.erase(lru_.back());
      lru_.pop_back();
    }
    lru_.push_front(key);
    it = entries_.emplace(key, Entry{}).first;
    it->second.lru = lru_.begin();
  } else {
    lru_.splice(lru_.begin(), lru_, it->second.lru);  // now the most recent
  }
  Entry& e = it->second;

  if (e.locked_until && *e.locked_until > now) {
    e.locked_until = now + options_.lockout;  // still trying while locked out: extend
    return;
  }
  e.locked_until.reset();

  // Forget failures that left the window.
  const auto horizon = now - options_.window;
  e.failures.erase(e.failures.begin(),
                   std::find_if(e.failures.begin(), e.failures.end(),
                                [&](Clock::time_point t) { return t > horizon; }));
  e.failures.push_back(now);
  if (static_cast<int>(e.failures.size()) >= max_failures) {
    e.locked_until = now + options_.lockout;
    e.failures.clear();
    e.failures.shrink_to_fit();
  }
}

void LoginLimiter::record_failure(std::string_view address, std::string_view identity,
                                  Clock::time_point now) {
  fail(key_of('a', address), options_.max_failures_per_address, now);
  if (!identity.empty()) fail(key_of('i', identity), options_.max_failures_per_identity, now);
}

void LoginLimiter::record_success(std::string_view /*address*/, std::string_view identity) {
  if (identity.empty()) return;
  auto it = entries_.find(key_of('i', identity));
  if (it == entries_.end()) return;
  it->second.failures.clear();
  if (!it->second.locked_until) {
    lru_.erase(it->second.lru);
    entries_.erase(it);
  }
}

}  // namespace testudo::auth
