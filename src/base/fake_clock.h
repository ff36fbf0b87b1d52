// A Clock for tests: time stands still until the test moves it, and timers fire only inside
// advance() or run_due(), on the test's thread, in due order (ties in the order they were set).
// A timer set or cancelled by a firing timer is honoured within the same advance().
// post() may be called from any thread; what it posts runs inside the next advance() or
// run_due(), first. Everything else: the test's thread only.
#pragma once

#include <map>
#include <mutex>
#include <vector>
#include <memory>
#include <utility>

#include "base/clock.h"

namespace testudo::testing {

class FakeClock final : public Clock {
 public:
  TimePoint now() const override { return now_; }
  std::int64_t unix_micros() const override {
    return kUnixStartUs + std::chrono::duration_cast<std::chrono::microseconds>(now_.time_since_epoch()).count();
  }
  std::unique_ptr<Timer> after(std::chrono::milliseconds delay, std::function<void()> fn) override {
    return add(delay, std::chrono::milliseconds(0), std::move(fn));
  }
  std::unique_ptr<Timer> every(std::chrono::milliseconds period, std::function<void()> fn) override {
    return add(period, std::max(period, std::chrono::milliseconds(1)), std::move(fn));
  }

  void post(std::function<void()> fn) override {
    std::lock_guard lock(posted_mutex_);
    posted_.push_back(std::move(fn));
  }
  // Moves time forward by `by`, firing every timer that falls due on the way, each at its due
  // time (now() reads the due time inside the handler).
  void advance(std::chrono::nanoseconds by) {
    run_posted();
    const TimePoint end = now_ + by;
    while (!due_.empty() && due_.begin()->first.first <= end) {
      auto node = due_.extract(due_.begin());
      std::shared_ptr<Slot> slot = node.mapped();
      if (slot->cancelled) continue;
      now_ = node.key().first;
      if (slot->period.count() > 0) {
        due_.emplace(Key{now_ + slot->period, next_order_++}, slot);  // re-armed before it runs
      } else {
        slot->cancelled = true;  // fired: done
      }
      auto fn = slot->fn;  // the handler may cancel (and so destroy) its own timer
      fn();
    }
    now_ = end;
  }
  // Fires the timers due now (zero delays, and those whose time has come).
  void run_due() { advance(std::chrono::nanoseconds(0)); }
  // Timers that will still fire.
  std::size_t pending() const {
    std::size_t n = 0;
    for (const auto& [key, slot] : due_) n += slot->cancelled ? 0 : 1;
    return n;
  }

 private:
  // 2026-01-01T00:00:00Z: wall time starts somewhere recognisable.
  static constexpr std::int64_t kUnixStartUs = 1'767'225'600'000'000;

  struct Slot {
    std::chrono::milliseconds period;  // 0: once
    std::function<void()> fn;
    bool cancelled = false;
  };
  using Key = std::pair<TimePoint, std::uint64_t>;  // due, order set

  class FakeTimer final : public Timer {
   public:
    explicit FakeTimer(std::shared_ptr<Slot> slot) : slot_(std::move(slot)) {}
    ~FakeTimer() override { cancel(); }
    void cancel() override { slot_->cancelled = true; }

   private:
    std::shared_ptr<Slot> slot_;
  };

  std::unique_ptr<Timer> add(std::chrono::milliseconds delay, std::chrono::milliseconds period,
                             std::function<void()> fn) {
    auto slot = std::make_shared<Slot>(Slot{period, std::move(fn)});
    due_.emplace(Key{now_ + delay, next_order_++}, slot);
    return std::make_unique<FakeTimer>(std::move(slot));
  }

  void run_posted() {
    for (;;) {
      std::vector<std::function<void()>> batch;
      {
        std::lock_guard lock(posted_mutex_);
        batch.swap(posted_);
      }
      if (batch.empty()) return;
      for (auto& fn : batch) fn();
    }
  }

  TimePoint now_{};
  std::mutex posted_mutex_;
  std::vector<std::function<void()>> posted_;
  std::uint64_t next_order_ = 0;
  std::multimap<Key, std::shared_ptr<Slot>> due_;
};

}  // namespace testudo::testing
