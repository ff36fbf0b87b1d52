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

}  // namespace

std::string encode_task_options(const TaskOptions& o) {
  ByteWriter w;
  w.u32(o.retries);
  w.u32(o.timeout_ms);
  write_ids(w, o.after);
  write_ids(w, o.follow);
  auto& b = w.buffer();
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

StatusOr<TaskOptions> decode_task_options(std::string_view text) {
  ByteReader r(std::as_bytes(std::span(text.data(), text.size())));
  TaskOptions o;
  o.retries = r.u32();
  o.timeout_ms = r.u32();
  if (!read_ids(r, o.after) || !read_ids(r, o.follow) || !r.at_end()) return data_loss("malformed task options");
  return o;
}

SharedBytes encode_ids(const std::vector<std::uint64_t>& ids) {
  ByteWriter w;
  write_ids(w, ids);
  return SharedBytes::copy_of(std::span<const std::byte>(w.buffer()));
}

StatusOr<std::vector<std::uint64_t>> decode_ids(const SharedBytes& segment) {
  ByteReader r(segment.span());
  std::vector<std::uint64_t> ids;
  if (!read_ids(r, ids) || !r.at_end()) return data_loss("malformed id list");
  return ids;
}

}  // namespace testudo::wire
