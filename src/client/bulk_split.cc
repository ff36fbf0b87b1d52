#include "client/bulk_split.h"

#include "net/data_link.h"

namespace testudo::client {

std::vector<std::vector<SharedBytes>> split_for_bulk(std::vector<SharedBytes>& segments, std::size_t targets,
                                                     std::uint64_t from_bytes) {
  if (targets == 0 || segments.size() % targets != 0) return {};
  const std::size_t per_target = segments.size() / targets;
  if (per_target < 2) return {};
  for (std::size_t t = 0; t < targets; ++t) {
    std::uint64_t bytes = 0;
    for (std::size_t i = 1; i < per_target; ++i) bytes += segments[t * per_target + i].size();
    if (bytes < from_bytes || bytes == 0) return {};
  }
  std::vector<std::vector<SharedBytes>> bodies(targets);
  std::vector<SharedBytes> control;
  control.reserve(2 * targets);
  for (std::size_t t = 0; t < targets; ++t) {
    std::vector<std::uint64_t> sizes;
    for (std::size_t i = 1; i < per_target; ++i) {
      sizes.push_back(segments[t * per_target + i].size());
      bodies[t].push_back(std::move(segments[t * per_target + i]));
    }
    control.push_back(std::move(segments[t * per_target]));
    control.push_back(net::encode_transfer_sizes(sizes));
  }
  segments = std::move(control);
  return bodies;
}

}  // namespace testudo::client
