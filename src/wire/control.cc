#include "wire/control.h"

#include "wire/byte_io.h"

namespace testudo::wire {

namespace {

constexpr std::size_t kMaxIds = 1u << 16;

void write_ids(ByteWriter& w, const std::vector<std::uint64_t>& ids) {
  w.u32(static_cast<std::uint32_t>(ids.size()));
  for (std::uint64_t id : ids) w.u64(id);
}

bool read_ids(ByteReader& r, std::vector<std::uint64_t>& ids) {
  std::uint32_t n = r.u32();
  // Each id takes 8 bytes: checking against what is left bounds the allocation.
  if (!r.ok() || n > kMaxIds || std::uint64_t(n) * 8 > r.remaining()) return false;
  ids.resize(n);
  for (auto& id : ids) id = r.u64();
  return r.ok();
}

constexpr std::uint8_t kRuleAll = 1, kRuleSuccess = 2, kRuleFailure = 4;

std::uint8_t rule_bits(const DependencyRule& rule) {
  return static_cast<std::uint8_t>((rule.all ? kRuleAll : 0) | (rule.success ? kRuleSuccess : 0) |
                                   (rule.failure ? kRuleFailure : 0));
}

// A rule must count some outcome (as ipyparallel's Dependency refuses one that counts none).
bool read_rule(ByteReader& r, DependencyRule& rule) {
  std::uint8_t bits = r.u8();
  if (!r.ok() || (bits & ~(kRuleAll | kRuleSuccess | kRuleFailure)) || !(bits & (kRuleSuccess | kRuleFailure))) {
    return false;
  }
  rule = {.all = (bits & kRuleAll) != 0, .success = (bits & kRuleSuccess) != 0, .failure = (bits & kRuleFailure) != 0};
  return true;
}

}  // namespace

std::string encode_task_options(const TaskOptions& o) {
  ByteWriter w;
  w.u32(o.retries);
  w.u32(o.timeout_ms);
  write_ids(w, o.after);
  write_ids(w, o.follow);
  if (o.after_rule != DependencyRule{} || o.follow_rule != DependencyRule{}) {
    w.u8(rule_bits(o.after_rule));
    w.u8(rule_bits(o.follow_rule));
  }
  auto& b = w.buffer();
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

StatusOr<TaskOptions> decode_task_options(std::string_view text) {
  ByteReader r(std::as_bytes(std::span(text.data(), text.size())));
  TaskOptions o;
  o.retries = r.u32();
  o.timeout_ms = r.u32();
  if (!read_ids(r, o.after) || !read_ids(r, o.follow)) return data_loss("malformed task options");
  if (!r.at_end()) {
    if (!read_rule(r, o.after_rule) || !read_rule(r, o.follow_rule)) return data_loss("malformed task options");
    // One encoding per value: default rules are written by leaving them out, never spelled.
    if (o.after_rule == DependencyRule{} && o.follow_rule == DependencyRule{}) {
      return data_loss("malformed task options (default dependency rules spelled out)");
    }
  }
  if (!r.at_end()) return data_loss("malformed task options");
  return o;
}

SharedBytes encode_ids(const std::vector<std::uint64_t>& ids) {
  ByteWriter w;
  write_ids(w, ids);
  return SharedBytes::copy_of(std::span<const std::byte>(w.buffer()));
}

namespace {
constexpr std::uint8_t kWelcomeTermsVersion = 1;
}  // namespace

std::string encode_welcome_terms(const WelcomeTerms& terms) {
  ByteWriter w;
  w.u8(kWelcomeTermsVersion);
  w.u64(terms.max_message_bytes);
  const auto bytes = w.take();
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

StatusOr<WelcomeTerms> decode_welcome_terms(std::string_view text) {
  WelcomeTerms terms;
  if (text.empty()) return terms;
  ByteReader r(std::as_bytes(std::span(text.data(), text.size())));
  const std::uint8_t version = r.u8();
  terms.max_message_bytes = r.u64();
  if (!r.ok() || !r.at_end() || version != kWelcomeTermsVersion || terms.max_message_bytes == 0) {
    return data_loss("malformed welcome terms");
  }
  return terms;
}

StatusOr<std::vector<std::uint64_t>> decode_ids(const SharedBytes& segment) {
  ByteReader r(segment.span());
  std::vector<std::uint64_t> ids;
  if (!read_ids(r, ids) || !r.at_end()) return data_loss("malformed id list");
  return ids;
}

std::string no_engine_text(std::uint32_t id, std::uint32_t next_id) {
  const std::string engine = "engine " + std::to_string(id);
  if (id < next_id) {
    // This id was this engine's, and its namespace went with it.
    return engine + " is gone: it disconnected or its process ended (a restarted engine gets a new id; " + engine +
           "'s variables are not on any other engine)";
  }
  return "no engine with id " + std::to_string(id) +
         (next_id == 0 ? std::string(" (no engine has registered yet)")
                       : " (this cluster has given out ids 0 to " + std::to_string(next_id - 1) + ")");
}

}  // namespace testudo::wire
