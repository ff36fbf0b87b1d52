#include "cli/targets.h"

#include <algorithm>
#include <charconv>
#include <optional>

namespace testudo::cli {
namespace {

std::optional<long> parse_long(const std::string& s) {
  long v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> parts;
  std::size_t start = 0;
  for (;;) {
    auto pos = s.find(sep, start);
    parts.push_back(s.substr(start, pos - start));
    if (pos == std::string::npos) return parts;
    start = pos + 1;
  }
}

}  // namespace

StatusOr<std::vector<EngineId>> select_targets(const std::string& spec, const std::vector<EngineId>& engine_ids) {
  std::vector<EngineId> ids = engine_ids;
  std::sort(ids.begin(), ids.end());
  const long n = static_cast<long>(ids.size());
  if (spec.empty() || spec == "all") return ids;
  auto bad = [&] {
    return invalid_argument("bad --targets '" + spec + "': use all, an id list like 0,2, or a slice like ::2 or 1::2");
  };
  if (spec.find(':') != std::string::npos) {
    auto parts = split(spec, ':');
    if (parts.size() > 3) return bad();
    std::optional<long> start, stop, step;
    if (!parts[0].empty() && !(start = parse_long(parts[0]))) return bad();
    if (parts.size() > 1 && !parts[1].empty() && !(stop = parse_long(parts[1]))) return bad();
    if (parts.size() > 2 && !parts[2].empty() && !(step = parse_long(parts[2]))) return bad();
    long st = step.value_or(1);
    if (st == 0) return invalid_argument("bad --targets '" + spec + "': slice step cannot be zero");
    // Python's slice.indices semantics.
    auto clamp = [&](std::optional<long> v, long def_pos, long def_neg) {
      if (!v) return st > 0 ? def_pos : def_neg;
      long x = *v < 0 ? *v + n : *v;
      if (st > 0) return std::clamp(x, 0L, n);
      return std::clamp(x, -1L, n - 1);
    };
    long lo = clamp(start, 0, n - 1);
    long hi = clamp(stop, n, -1);
    std::vector<EngineId> out;
    for (long i = lo; st > 0 ? i < hi : i > hi; i += st) out.push_back(ids[static_cast<std::size_t>(i)]);
    return out;
  }
  if (auto single = parse_long(spec); single && *single < 0) {
    if (-*single > n) return invalid_argument("--targets " + spec + ": only " + std::to_string(n) + " engines");
    return std::vector<EngineId>{ids[static_cast<std::size_t>(n + *single)]};
  }
  std::vector<EngineId> out;
  for (const auto& part : split(spec, ',')) {
    auto v = parse_long(part);
    if (!v || *v < 0 || *v > 0xFFFFFFFFL) return bad();
    out.push_back(static_cast<EngineId>(*v));
  }
  return out;
}

}  // namespace testudo::cli
