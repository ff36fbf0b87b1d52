#include "controller/refusal_digest.h"

#include <utility>

namespace testudo::controller {
namespace {

constexpr char kOtherHosts[] = "other hosts";
constexpr char kOtherReasons[] = "other reasons";
// A reason is a log text: long ones (a TLS error with a path) are cut to keep lines short.
constexpr std::size_t kMaxReasonChars = 120;

}  // namespace

RefusalDigest::RefusalDigest(Clock& clock, Summary summary, std::chrono::seconds window)
    : clock_(clock), summary_(std::move(summary)) {
  timer_ = clock_.every(window, [this] { flush(); });
}

RefusalDigest::~RefusalDigest() = default;

std::string RefusalDigest::host_of(std::string_view peer) {
  if (peer.starts_with("[")) {
    const auto end = peer.find(']');
    return std::string(end == std::string_view::npos ? peer : peer.substr(0, end + 1));
  }
  const auto colon = peer.rfind(':');
  // One colon: host:port. More (a bare IPv6 address): no port to strip.
  if (colon == std::string_view::npos || peer.find(':') != colon) return std::string(peer);
  return std::string(peer.substr(0, colon));
}

bool RefusalDigest::note(std::string_view peer, std::string_view reason) {
  std::string host = host_of(peer);
  auto it = hosts_.find(host);
  if (it == hosts_.end()) {
    if (hosts_.size() < kMaxHosts) {
      hosts_.emplace(std::move(host), Host{});
      return true;  // the first from this host in this window: log it in full
    }
    it = hosts_.try_emplace(kOtherHosts).first;
  }
  Host& h = it->second;
  ++h.more;
  std::string key(reason.substr(0, kMaxReasonChars));
  if (h.reasons.size() >= kMaxReasons && !h.reasons.contains(key)) key = kOtherReasons;
  ++h.reasons[key];
  return false;
}

void RefusalDigest::flush() {
  auto hosts = std::exchange(hosts_, {});
  for (const auto& [host, h] : hosts) {
    if (h.more == 0) continue;
    std::string reasons;
    for (const auto& [reason, count] : h.reasons) {
      reasons += (reasons.empty() ? "" : "; ") + reason + " (" + std::to_string(count) + ")";
    }
    summary_(host, h.more, reasons);
  }
}

}  // namespace testudo::controller
