// Refused and failed connections, summed per peer host: what keeps a connection flood from
// filling the log (and the audit log from missing it). The first refusal from a host in a
// window is logged in full; the rest are counted by reason, and when the window ends one line
// and one audit record say "N more connection(s) from HOST refused in 60 s: reason (count); ...".
// Memory is bounded: at most kMaxHosts hosts and kMaxReasons reasons each are kept apart per
// window; the rest are counted under "other hosts" / "other reasons".
// Threading: one thread (the hub's loop), like the Clock it is given.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "base/clock.h"

namespace testudo::controller {

class RefusalDigest {
 public:
  // Called once per host per window that had refusals beyond its first: `more` of them.
  using Summary = std::function<void(const std::string& host, std::uint64_t more, const std::string& reasons)>;
  static constexpr std::size_t kMaxHosts = 1024;
  static constexpr std::size_t kMaxReasons = 8;

  RefusalDigest(Clock& clock, Summary summary, std::chrono::seconds window = std::chrono::seconds(60));
  ~RefusalDigest();
  RefusalDigest(const RefusalDigest&) = delete;
  RefusalDigest& operator=(const RefusalDigest&) = delete;

  // A connection from `peer` ("host:port" or "[v6]:port") was refused for `reason`. True when
  // the caller should log this one in full (the host's first in this window).
  bool note(std::string_view peer, std::string_view reason);
  // Reports what the window holds now (at its end, and on shutdown).
  void flush();

  // "10.0.0.7:40112" -> "10.0.0.7", "[::1]:5" -> "[::1]", no port -> as given.
  static std::string host_of(std::string_view peer);

 private:
  struct Host {
    std::uint64_t more = 0;                          // beyond the first, this window
    std::map<std::string, std::uint64_t> reasons;  // of those, by reason
  };
  Clock& clock_;
  Summary summary_;
  std::map<std::string, Host> hosts_;
  std::unique_ptr<Timer> timer_;
};

}  // namespace testudo::controller
