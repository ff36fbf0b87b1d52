#include "wire/body.h"

#include "wire/byte_io.h"

namespace testudo::wire {
namespace {

constexpr std::size_t kMaxTextBytes = 64u << 20;  // tracebacks, literals: generous but bounded

SharedBytes from_writer(ByteWriter& w) { return SharedBytes::copy_of(std::span<const std::byte>(w.buffer())); }

}  // namespace

SharedBytes encode_names(const std::vector<std::string>& names) {
  ByteWriter w;
  w.u32(static_cast<std::uint32_t>(names.size()));
  for (const auto& n : names) w.str(n);
  return from_writer(w);
}

StatusOr<std::vector<std::string>> decode_names(const SharedBytes& segment) {
  ByteReader r(segment.span());
  std::uint32_t n = r.u32();
  // Every name costs at least its 4-byte length: bounds the reservation by the input size.
  if (!r.ok() || n > kMaxNames || std::uint64_t(n) * 4 > r.remaining()) return data_loss("bad name count");
  std::vector<std::string> names;
  names.reserve(n);
  for (std::uint32_t i = 0; i < n && r.ok(); ++i) names.push_back(r.str(kMaxNameBytes));
  if (!r.ok() || !r.at_end()) return data_loss("malformed name list");
  return names;
}

SharedBytes encode_literal_pairs(const LiteralPairs& pairs) {
  ByteWriter w;
  w.u32(static_cast<std::uint32_t>(pairs.size()));
  for (const auto& [name, literal] : pairs) {
    w.str(name);
    w.str(literal);
  }
  return from_writer(w);
}

StatusOr<LiteralPairs> decode_literal_pairs(const SharedBytes& segment) {
  ByteReader r(segment.span());
  std::uint32_t n = r.u32();
  if (!r.ok() || n > kMaxNames || std::uint64_t(n) * 8 > r.remaining()) return data_loss("bad value count");
  LiteralPairs pairs;
  pairs.reserve(n);
  for (std::uint32_t i = 0; i < n && r.ok(); ++i) {
    std::string name = r.str(kMaxNameBytes);
    std::string literal = r.str(kMaxTextBytes);
    pairs.emplace_back(std::move(name), std::move(literal));
  }
  if (!r.ok() || !r.at_end()) return data_loss("malformed literal values");
  return pairs;
}

SharedBytes encode_reply_meta(const ReplyMeta& m) {
  ByteWriter w;
  w.u8(m.ok ? 1 : 0);
  w.str(m.ename);
  w.str(m.evalue);
  w.str(m.traceback);
  w.u64(m.started_us);
  w.u64(m.completed_us);
  return from_writer(w);
}

StatusOr<ReplyMeta> decode_reply_meta(const SharedBytes& segment) {
  ByteReader r(segment.span());
  ReplyMeta m;
  std::uint8_t ok = r.u8();
  m.ok = ok == 1;
  m.ename = r.str(kMaxNameBytes);
  m.evalue = r.str(kMaxTextBytes);
  m.traceback = r.str(kMaxTextBytes);
  m.started_us = r.u64();
  m.completed_us = r.u64();
  if (!r.ok() || !r.at_end() || ok > 1) return data_loss("malformed reply metadata");
  return m;
}

}  // namespace testudo::wire
