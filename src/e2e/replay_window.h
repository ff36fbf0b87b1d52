// Which sequence numbers of one pair key an engine has already run (docs/e2e-design.md): a
// relayed request may arrive late or not at all (an abort), but never twice. A sliding
// window of kWindow numbers below the highest seen, as IPsec's and DTLS's anti-replay
// windows: anything older than the window is refused too. Plain value; not thread-safe.
#pragma once

#include <bitset>
#include <cstdint>

namespace testudo::e2e {

class ReplayWindow {
 public:
  static constexpr std::uint64_t kWindow = 1024;

  // True (and remembered) the first time `seq` is seen and it is not older than the window;
  // false for a replay, for 0 (never used) and for a number that fell out of the window.
  bool accept(std::uint64_t seq) {
    if (seq == 0) return false;
    if (seq > highest_) {
      const std::uint64_t shift = seq - highest_;
      seen_ = shift >= kWindow ? std::bitset<kWindow>() : seen_ << shift;
      seen_.set(0);
      highest_ = seq;
      return true;
    }
    const std::uint64_t age = highest_ - seq;
    if (age >= kWindow || seen_.test(age)) return false;
    seen_.set(age);
    return true;
  }

 private:
  std::uint64_t highest_ = 0;
  std::bitset<kWindow> seen_;  // bit i: highest_ - i was seen
};

}  // namespace testudo::e2e
