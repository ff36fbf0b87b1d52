#include "wire/message.h"

#include <algorithm>
#include <cstring>

#include "wire/byte_io.h"

namespace testudo::wire {
namespace {

constexpr std::uint32_t kMaxTargets = 1u << 16;
// Frame header flags (bytes 6..7, little-endian): bit 0 marks an overtaking message's frames.
constexpr std::uint16_t kOvertakingFlag = 1;
constexpr std::uint16_t kAbandonsFlag = 2;

bool is_known_kind(std::uint16_t k) {
  switch (static_cast<MessageKind>(k)) {
    case MessageKind::kHello:
    case MessageKind::kLoginStep:
    case MessageKind::kWelcome:
    case MessageKind::kRejected:
    case MessageKind::kHeartbeat:
    case MessageKind::kHeartbeatAck:
    case MessageKind::kEngineInfo:
    case MessageKind::kExecute:
    case MessageKind::kPush:
    case MessageKind::kPull:
    case MessageKind::kApply:
    case MessageKind::kEngineList:
    case MessageKind::kClusterStatus:
    case MessageKind::kClusterShutdown:
    case MessageKind::kTaskReply:
    case MessageKind::kEngineListReply:
    case MessageKind::kClusterStatusReply:
    case MessageKind::kClusterShutdownReply:
    case MessageKind::kTaskOutput:
    case MessageKind::kSubmitted:
    case MessageKind::kBulkTicket:
    case MessageKind::kEngineShutdown:
    case MessageKind::kAbort:
    case MessageKind::kInterrupt:
    case MessageKind::kQueueStatus:
    case MessageKind::kAbortReply:
    case MessageKind::kInterruptReply:
    case MessageKind::kQueueStatusReply:
    case MessageKind::kEngineInterrupt:
    case MessageKind::kEngineAbort:
    case MessageKind::kGetResult:
    case MessageKind::kResultStatus:
    case MessageKind::kDbQuery:
    case MessageKind::kPurgeResults:
    case MessageKind::kResultStatusReply:
    case MessageKind::kDbQueryReply:
    case MessageKind::kPurgeResultsReply:
    case MessageKind::kKeyAdmin:
    case MessageKind::kKeyAdminReply:
      return true;
  }
  return false;
}

// The flags rules of message.h, for a head read from the network.
bool flags_valid(MessageKind kind, std::uint16_t flags) {
  constexpr std::uint16_t kBalanced = 0x8000, kSealed = 0x4000, kBulk = 0x2000;
  constexpr std::uint16_t kTaskBits = kBalanced | kSealed;
  // Bulk: only a sealed execute, push or apply (direct or load balanced), and a task reply.
  if ((flags & kBulk) != 0) {
    if (kind == MessageKind::kTaskReply) return flags == kBulk;
    if (kind == MessageKind::kPull || (flags & kSealed) == 0) return false;
    flags &= static_cast<std::uint16_t>(~kBulk);
  }
  switch (kind) {
    case MessageKind::kExecute: return (flags & ~(kTaskBits | 1u)) == 0;
    case MessageKind::kPush:
    case MessageKind::kPull: {
      const std::uint16_t format = flags & ~kTaskBits;
      return format == static_cast<std::uint16_t>(ValueFormat::kPickle) ||
             format == static_cast<std::uint16_t>(ValueFormat::kLiteral);
    }
    case MessageKind::kApply: return (flags & ~kTaskBits) == 0;
    case MessageKind::kTaskOutput:
      return flags == static_cast<std::uint16_t>(OutputStream::kStdout) ||
             flags == static_cast<std::uint16_t>(OutputStream::kStderr);
    default: return flags == 0;
  }
}

}  // namespace

bool carries_outcome(MessageKind kind) {
  switch (kind) {
    case MessageKind::kTaskReply:
    case MessageKind::kRejected:
    case MessageKind::kEngineListReply:
    case MessageKind::kClusterStatusReply:
    case MessageKind::kClusterShutdownReply:
    case MessageKind::kAbortReply:
    case MessageKind::kInterruptReply:
    case MessageKind::kQueueStatusReply:
    case MessageKind::kResultStatusReply:
    case MessageKind::kDbQueryReply:
    case MessageKind::kPurgeResultsReply:
    case MessageKind::kKeyAdminReply:
      return true;
    default:
      return false;
  }
}

std::array<std::byte, kFrameHeaderBytes> encode_frame_header(const FrameHeader& header) {
  std::array<std::byte, kFrameHeaderBytes> out{};
  std::memcpy(out.data(), kMagic.data(), 4);
  out[4] = std::byte{kProtocolVersion};
  out[5] = std::byte{static_cast<std::uint8_t>(header.type)};
  const std::uint16_t flags = (header.overtaking ? kOvertakingFlag : 0) | (header.abandons ? kAbandonsFlag : 0);
  out[6] = static_cast<std::byte>(flags);  // out[7]: zero
  for (int i = 0; i < 4; ++i) out[8 + i] = static_cast<std::byte>(header.length >> (8 * i));
  return out;
}

StatusOr<FrameHeader> decode_frame_header(std::span<const std::byte, kFrameHeaderBytes> bytes, const Limits& limits) {
  if (std::memcmp(bytes.data(), kMagic.data(), 4) != 0) return data_loss("bad frame magic (not a testudo peer?)");
  ByteReader r(bytes.subspan(4));
  std::uint8_t version = r.u8();
  std::uint8_t type = r.u8();
  std::uint16_t flags = r.u16();
  std::uint32_t length = r.u32();
  if (version != kProtocolVersion) {
    return data_loss("unsupported protocol version " + std::to_string(version) + " (this build speaks " +
                     std::to_string(kProtocolVersion) + ")");
  }
  if (type != static_cast<std::uint8_t>(FrameType::kHead) && type != static_cast<std::uint8_t>(FrameType::kData)) {
    return data_loss("unknown frame type " + std::to_string(type));
  }
  if ((flags & ~(kOvertakingFlag | kAbandonsFlag)) != 0) return data_loss("reserved frame flags set");
  FrameHeader h{static_cast<FrameType>(type), length, (flags & kOvertakingFlag) != 0, (flags & kAbandonsFlag) != 0};
  std::uint32_t max = h.type == FrameType::kHead ? std::min(limits.max_head_bytes, limits.max_frame_bytes)
                                                 : limits.max_frame_bytes;
  if (length > max) {
    return resource_exhausted("frame of " + std::to_string(length) + " bytes exceeds the limit of " +
                              std::to_string(max));
  }
  // Only an abandoning frame is empty (the assembler checks where it may stand).
  if (h.type == FrameType::kData && length == 0 && !h.abandons) return data_loss("empty data frame");
  return h;
}

std::string_view role_name(Role role) {
  switch (role) {
    case Role::kClient: return "client";
    case Role::kEngine: return "engine";
    case Role::kController: return "controller";
  }
  return "unknown";
}

std::string_view kind_name(MessageKind kind) {
  switch (kind) {
    case MessageKind::kHello: return "hello";
    case MessageKind::kLoginStep: return "login step";
    case MessageKind::kWelcome: return "welcome";
    case MessageKind::kRejected: return "rejected";
    case MessageKind::kHeartbeat: return "heartbeat";
    case MessageKind::kHeartbeatAck: return "heartbeat-ack";
    case MessageKind::kEngineInfo: return "engine-info";
    case MessageKind::kExecute: return "execute";
    case MessageKind::kPush: return "push";
    case MessageKind::kPull: return "pull";
    case MessageKind::kApply: return "apply";
    case MessageKind::kEngineList: return "engine-list";
    case MessageKind::kClusterStatus: return "cluster-status";
    case MessageKind::kClusterShutdown: return "cluster-shutdown";
    case MessageKind::kTaskReply: return "task-reply";
    case MessageKind::kEngineListReply: return "engine-list-reply";
    case MessageKind::kClusterStatusReply: return "cluster-status-reply";
    case MessageKind::kClusterShutdownReply: return "cluster-shutdown-reply";
    case MessageKind::kTaskOutput: return "task-output";
    case MessageKind::kSubmitted: return "submitted";
    case MessageKind::kBulkTicket: return "bulk-ticket";
    case MessageKind::kEngineShutdown: return "engine-shutdown";
    case MessageKind::kAbort: return "abort";
    case MessageKind::kInterrupt: return "interrupt";
    case MessageKind::kQueueStatus: return "queue-status";
    case MessageKind::kAbortReply: return "abort-reply";
    case MessageKind::kInterruptReply: return "interrupt-reply";
    case MessageKind::kQueueStatusReply: return "queue-status-reply";
    case MessageKind::kEngineInterrupt: return "engine-interrupt";
    case MessageKind::kEngineAbort: return "engine-abort";
    case MessageKind::kGetResult: return "get-result";
    case MessageKind::kResultStatus: return "result-status";
    case MessageKind::kDbQuery: return "db-query";
    case MessageKind::kPurgeResults: return "purge-results";
    case MessageKind::kResultStatusReply: return "result-status-reply";
    case MessageKind::kDbQueryReply: return "db-query-reply";
    case MessageKind::kPurgeResultsReply: return "purge-results-reply";
    case MessageKind::kKeyAdmin: return "key-admin";
    case MessageKind::kKeyAdminReply: return "key-admin-reply";
  }
  return "unknown";
}

// The head of `e` (its private flags and outcome passed in by the friends below) with `count`
// segments whose sizes size_of(i) gives: no vector built, this runs for every message sent.
template <typename SizeOf>
std::vector<std::byte> encode_head_with(const Envelope& e, std::uint16_t flags, Outcome outcome, std::size_t count,
                                        SizeOf size_of) {
  ByteWriter w;
  w.buffer().reserve(48 + e.text.size() + 4 * e.targets.size() + 8 * count);
  w.u16(static_cast<std::uint16_t>(e.kind));
  w.u16(flags);
  w.u16(static_cast<std::uint16_t>(outcome));
  w.u64(e.request_id);
  w.u64(e.task_id);
  w.u32(e.client_id);
  w.u32(e.engine_id);
  w.u32(static_cast<std::uint32_t>(e.targets.size()));
  for (std::uint32_t t : e.targets) w.u32(t);
  w.str(e.text);
  w.u32(static_cast<std::uint32_t>(count));
  for (std::size_t i = 0; i < count; ++i) w.u64(size_of(i));
  return w.take();
}

std::vector<std::byte> encode_head(const Envelope& e, std::span<const SharedBytes> segments) {
  return encode_head_with(e, e.flags_, e.outcome_, segments.size(), [&](std::size_t i) -> std::uint64_t { return segments[i].size(); });
}

std::vector<std::byte> encode_head_sized(const Envelope& e, std::span<const std::uint64_t> sizes) {
  return encode_head_with(e, e.flags_, e.outcome_, sizes.size(), [&](std::size_t i) { return sizes[i]; });
}

StatusOr<Head> decode_head(std::span<const std::byte> payload, const Limits& limits) {
  if (payload.size() > limits.max_head_bytes) return resource_exhausted("message head too large");
  ByteReader r(payload);
  Head h;
  Envelope& e = h.envelope;
  std::uint16_t kind = r.u16();
  std::uint16_t flags = r.u16();
  std::uint16_t outcome_number = r.u16();
  e.request_id = r.u64();
  e.task_id = r.u64();
  e.client_id = r.u32();
  e.engine_id = r.u32();
  if (!r.ok()) return data_loss("truncated message head");
  if (!is_known_kind(kind)) return data_loss("unknown message kind " + std::to_string(kind));
  e.kind = static_cast<MessageKind>(kind);
  if (!flags_valid(e.kind, flags)) {
    return data_loss("flags " + std::to_string(flags) + " are not valid on a '" + std::string(kind_name(e.kind)) + "'");
  }
  e.flags_ = flags;
  std::optional<Outcome> outcome = outcome_from_number(outcome_number);
  if (!outcome) return data_loss("unknown outcome " + std::to_string(outcome_number) + " in message head");
  if (is_local(*outcome) || (*outcome != Outcome::kOk && !carries_outcome(e.kind))) {
    return data_loss("outcome '" + std::string(outcome_name(*outcome)) + "' cannot come on a '" +
                     std::string(kind_name(e.kind)) + "'");
  }
  e.outcome_ = *outcome;
  std::uint32_t ntargets = r.u32();
  // Each target takes 4 bytes: checking against what is left bounds the allocation.
  if (!r.ok() || ntargets > kMaxTargets || std::uint64_t(ntargets) * 4 > r.remaining()) {
    return data_loss("bad target count in message head");
  }
  e.targets.resize(ntargets);
  for (auto& t : e.targets) t = r.u32();
  e.text = r.str(limits.max_head_bytes);
  std::uint32_t nseg = r.u32();
  if (!r.ok()) return data_loss("truncated message head");
  if (nseg > limits.max_segments || std::uint64_t(nseg) * 8 > r.remaining()) {
    return resource_exhausted("message has " + std::to_string(nseg) + " segments; the limit is " +
                              std::to_string(limits.max_segments));
  }
  h.segment_sizes.resize(nseg);
  std::uint64_t total = 0;
  for (auto& s : h.segment_sizes) {
    s = r.u64();
    // Sum cannot overflow: each term is checked against max_message_bytes first.
    if (s > limits.max_message_bytes || total + s > limits.max_message_bytes) {
      return resource_exhausted("message body exceeds the limit of " + std::to_string(limits.max_message_bytes) +
                                " bytes");
    }
    total += s;
  }
  if (!r.ok()) return data_loss("truncated message head");
  if (!r.at_end()) return data_loss("trailing bytes after message head");
  return h;
}

Status check_outgoing(const Envelope& e, std::span<const SharedBytes> segments, const Limits& limits) {
  // What encode_head writes: 3 u16, 2 u64, 4 u32 counts/ids and the text length, the
  // targets, the text and 8 bytes per segment.
  const std::uint64_t head_bytes = 3 * 2 + 2 * 8 + 2 * 4 + 4 + 4 * std::uint64_t(e.targets.size()) + 4 +
                                   e.text.size() + 4 + 8 * std::uint64_t(segments.size());
  if (head_bytes > limits.max_head_bytes || e.targets.size() > kMaxTargets) {
    return resource_exhausted("the request's head (" + std::to_string(e.targets.size()) + " targets, " +
                              std::to_string(e.text.size()) + " bytes of options) exceeds the limit of " +
                              std::to_string(limits.max_head_bytes) + " bytes");
  }
  if (segments.size() > limits.max_segments) {
    return resource_exhausted("the request has " + std::to_string(segments.size()) + " buffers; the limit is " +
                              std::to_string(limits.max_segments));
  }
  std::uint64_t total = 0;
  for (const SharedBytes& s : segments) total += s.size();
  if (total > limits.max_message_bytes) {
    return resource_exhausted("the request's " + std::to_string(total) + " bytes exceed the limit of " +
                              std::to_string(limits.max_message_bytes) + " bytes");
  }
  return ok_status();
}

bool may_overtake(MessageKind kind) {
  using K = MessageKind;
  switch (kind) {
    case K::kHeartbeat: case K::kHeartbeatAck:
    case K::kInterrupt: case K::kInterruptReply: case K::kEngineInterrupt:
    case K::kQueueStatus: case K::kQueueStatusReply:
    case K::kClusterStatus: case K::kClusterStatusReply:
    case K::kEngineList: case K::kEngineListReply:
      return true;
    default:
      return false;
  }
}

bool is_allowed_after_auth(Role sender, MessageKind kind) {
  using K = MessageKind;
  switch (sender) {
    case Role::kClient:
      switch (kind) {
        case K::kHeartbeat: case K::kExecute: case K::kPush: case K::kPull: case K::kApply:
        case K::kEngineList: case K::kClusterStatus: case K::kClusterShutdown:
        case K::kAbort: case K::kInterrupt: case K::kQueueStatus:
        case K::kGetResult: case K::kResultStatus: case K::kDbQuery: case K::kPurgeResults:
        case K::kKeyAdmin:
        case K::kLoginStep:  // a login renewed on the admitted connection (a fresh token)
          return true;
        default:
          return false;
      }
    case Role::kEngine:
      return kind == K::kHeartbeat || kind == K::kTaskReply || kind == K::kEngineInfo || kind == K::kTaskOutput;
    case Role::kController:
      switch (kind) {
        case K::kHeartbeatAck: case K::kExecute: case K::kPush: case K::kPull: case K::kApply:
        case K::kTaskReply: case K::kEngineListReply: case K::kClusterStatusReply:
        case K::kClusterShutdownReply: case K::kEngineShutdown: case K::kRejected:
        case K::kAbortReply: case K::kInterruptReply: case K::kQueueStatusReply: case K::kEngineInterrupt:
        case K::kEngineAbort: case K::kTaskOutput: case K::kSubmitted: case K::kBulkTicket:
        case K::kResultStatusReply: case K::kDbQueryReply: case K::kPurgeResultsReply:
        case K::kKeyAdminReply:
        case K::kLoginStep:  // the answer to a renewal
          return true;
        default:
          return false;
      }
  }
  return false;
}

}  // namespace testudo::wire
