// Which sequence numbers of one key an engine has already run (docs/e2e-design.md): a
// relayed request may arrive late or not at all (an abort), but never twice.
//
// Why not IPsec's or DTLS's 1,024-wide window: a load-balanced key is shared by every engine
// of the client, and its requests reach an engine in whatever order the scheduler frees them
// (a retry after an engine died, a task waiting on a dependency, a busy engine's backlog), so
// one can arrive after thousands of later numbers and is still new. So this is a bitmap of
// every number from a base up to the highest seen, grown a word at a time as numbers come
// (1 bit per request: 10^6 requests of one client cost 125 KB), and only past kMaxNumbers
// does it drop its oldest words: numbers below the base are refused too, never run twice.
// Plain value; not thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>

namespace testudo::e2e {

class ReplayWindow {
 public:
  // The numbers remembered below the highest one (16 Mi: 2 MiB of bits at most per key).
  static constexpr std::uint64_t kMaxNumbers = std::uint64_t{1} << 24;

  enum class Verdict {
    kNew,       // remembered now: run it
    kSeen,      // run before: a replay
    kTooOld,    // fell below the numbers remembered: refused (it may or may not have run)
  };

  Verdict check(std::uint64_t seq) {
    if (seq == 0 || seq < base_) return seq == 0 ? Verdict::kSeen : Verdict::kTooOld;
    std::uint64_t index = seq - base_;
    if (index / 64 >= words_.size()) {
      // A new highest number: forget the oldest words beyond kMaxNumbers (all of them after a
      // jump that far), then grow to reach it.
      const std::uint64_t needed = index / 64 + 1;
      constexpr std::uint64_t kKeep = kMaxNumbers / 64;
      if (needed > kKeep) {
        const std::uint64_t drop = needed - kKeep;
        if (drop >= words_.size()) {
          words_.clear();
        } else {
          words_.erase(words_.begin(), words_.begin() + static_cast<std::ptrdiff_t>(drop));
        }
        base_ += drop * 64;
        index = seq - base_;
      }
      words_.resize(static_cast<std::size_t>(index / 64 + 1), 0);
    }
    std::uint64_t& word = words_[static_cast<std::size_t>(index / 64)];
    const std::uint64_t bit = std::uint64_t{1} << (index % 64);
    if ((word & bit) != 0) return Verdict::kSeen;
    word |= bit;
    return Verdict::kNew;
  }

  // True (and remembered) the first time `seq` is seen and it is still remembered.
  bool accept(std::uint64_t seq) { return check(seq) == Verdict::kNew; }

 private:
  std::uint64_t base_ = 1;           // the number of bit 0 of words_[0]
  std::deque<std::uint64_t> words_;  // bit i of word w: base_ + 64 w + i was seen
};

}  // namespace testudo::e2e
