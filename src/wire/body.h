// Encodings of message bodies shared by the client (which writes requests and reads replies)
// and the engine (which reads requests and writes replies). The controller never calls the
// decoders here (docs/threat-model.md T17). Every decoder is fuzzed (fuzz/).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "base/shared_bytes.h"
#include "testudo/status.h"

namespace testudo::wire {

inline constexpr std::size_t kMaxNames = 1u << 16;
inline constexpr std::size_t kMaxNameBytes = 1u << 10;

// kPull body: the names to pull.
SharedBytes encode_names(const std::vector<std::string>& names);
StatusOr<std::vector<std::string>> decode_names(const SharedBytes& segment);

// kPush body in ValueFormat::kLiteral: (name, Python literal text) pairs.
using LiteralPairs = std::vector<std::pair<std::string, std::string>>;
SharedBytes encode_literal_pairs(const LiteralPairs& pairs);
StatusOr<LiteralPairs> decode_literal_pairs(const SharedBytes& segment);

// A kTaskReply body from an engine: segments [meta, stdout, stderr, value...].
struct ReplyMeta {
  bool ok = true;
  std::string ename;       // Python exception type name when !ok
  std::string evalue;      // str(exception)
  std::string traceback;   // formatted traceback text
  std::uint64_t started_us = 0;    // engine wall clock, microseconds since the epoch
  std::uint64_t completed_us = 0;

  bool operator==(const ReplyMeta&) const = default;
};
inline constexpr std::size_t kReplyFixedSegments = 3;  // meta, stdout, stderr

SharedBytes encode_reply_meta(const ReplyMeta& meta);
StatusOr<ReplyMeta> decode_reply_meta(const SharedBytes& segment);

}  // namespace testudo::wire
