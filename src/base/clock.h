// Time and alarms as an interface. Components that keep time (the hub's heartbeats, deadlines
// and batching, the stored-results upkeep) read it and set their timers through a Clock they are
// handed, so their tests drive time with a FakeClock (base/fake_clock.h) instead of sleeping.
// net::EventLoop is the real one.
//
// Threading: a Clock belongs to one thread (its loop's); timers fire there, and after(),
// every() and cancel() are called there. post() is the one call other threads may make.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>

namespace testudo {

class Timer {
 public:
  virtual ~Timer() = default;  // destroying a timer cancels it
  virtual void cancel() = 0;
};

class Clock {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;
  using Duration = std::chrono::steady_clock::duration;

  virtual ~Clock() = default;
  // Monotonic time: for timeouts, deadlines and ages.
  virtual TimePoint now() const = 0;
  // Wall-clock time in microseconds since the Unix epoch: for what is recorded and shown.
  virtual std::int64_t unix_micros() const = 0;
  // Calls `fn` once after `delay` / every `period`, on the clock's thread, until the returned
  // timer is cancelled or destroyed. A zero delay runs `fn` after the current handler returns,
  // never inside the caller.
  virtual std::unique_ptr<Timer> after(std::chrono::milliseconds delay, std::function<void()> fn) = 0;
  virtual std::unique_ptr<Timer> every(std::chrono::milliseconds period, std::function<void()> fn) = 0;
  // Thread-safe: runs `fn` on the clock's thread soon (how a worker thread hands a result back).
  virtual void post(std::function<void()> fn) = 0;
};

}  // namespace testudo
