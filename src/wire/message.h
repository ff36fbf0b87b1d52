// testudo's wire protocol, version 1.
//
// A connection (one TLS session per peer) carries messages. A message is
//   Envelope   — the routing header: kind, ids, targets, controller status. Read by the
//                controller to route and account; small and bounded.
//   segments   — the body: opaque byte strings (code, pickles, out-of-band buffers). The
//                controller never decodes a body (docs/threat-model.md T17); an end-to-end
//                layer can later seal the body without touching routing.
//
// On the wire a message is a sequence of frames, each with a fixed 12-byte header:
//   magic "TSTU" (4) | version u8 | frame type u8 | flags u16 (0) | payload length u32
// The first frame (type kHead) carries the encoded Envelope plus the segment sizes; the
// segment bytes follow in kData frames of at most Limits::max_frame_bytes each, segment by
// segment, so no single read is larger than a frame and values of any size (up to
// max_message_bytes) are chunked. Every length is checked against the limits before any
// allocation; the receiver allocates a segment only after its head passed those checks.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/shared_bytes.h"
#include "testudo/status.h"

namespace testudo::wire {

inline constexpr std::array<std::byte, 4> kMagic{std::byte{'T'}, std::byte{'S'}, std::byte{'T'}, std::byte{'U'}};
inline constexpr std::uint8_t kProtocolVersion = 1;
inline constexpr std::size_t kFrameHeaderBytes = 12;

enum class FrameType : std::uint8_t { kHead = 1, kData = 2 };

struct FrameHeader {
  FrameType type = FrameType::kHead;
  std::uint32_t length = 0;  // payload bytes that follow the header
};

// Size bounds one connection enforces on what it receives. A peer that has not yet
// authenticated gets kPreAuth: one small head, no body.
struct Limits {
  std::uint32_t max_frame_bytes = 1u << 20;          // 1 MiB per frame (and per read)
  std::uint32_t max_head_bytes = 64u << 10;           // envelope + segment table
  std::uint32_t max_segments = 4096;
  std::uint64_t max_message_bytes = 4ull << 30;       // sum of a message's segments (4 GiB)

  static Limits pre_auth() { return Limits{1u << 12, 1u << 12, 0, 0}; }
};

std::array<std::byte, kFrameHeaderBytes> encode_frame_header(const FrameHeader& header);
// Checks magic, version, type, flags (must be 0) and length <= limits.max_frame_bytes
// (and <= max_head_bytes for a head) — before the caller reads or allocates the payload.
StatusOr<FrameHeader> decode_frame_header(std::span<const std::byte, kFrameHeaderBytes> bytes, const Limits& limits);

// Who sent a message. Each role has its own allowlist of kinds (see is_allowed).
enum class Role : std::uint8_t { kClient = 1, kEngine = 2, kController = 3 };
std::string_view role_name(Role role);

enum class MessageKind : std::uint16_t {
  // Handshake. A peer's first and only message before authentication is kHello.
  kHello = 1,     // client/engine -> controller: role and capability proof (auth/)
  kWelcome = 2,   // controller -> peer: accepted; envelope.engine_id / client_id assigned
  kRejected = 3,  // controller -> peer: envelope.text says why; the connection closes

  kHeartbeat = 10,     // client/engine -> controller
  kHeartbeatAck = 11,  // controller -> client/engine
  // engine -> controller after welcome: tags and host facts, a JSON object in Envelope::text.
  kEngineInfo = 12,

  // Task requests: client -> controller (with targets) and controller -> engine (one target).
  kExecute = 20,  // segments: [code]
  kPush = 21,     // segments: pickle format: [pickle of dict, buffers...]; literal: [literal pairs]
  kPull = 22,     // segments: [names]
  kApply = 23,    // segments: [pickle of (f, args, kwargs), buffers...]

  // Control: client -> controller.
  kEngineList = 30,
  kClusterStatus = 31,
  kClusterShutdown = 32,

  // Replies.
  kTaskReply = 40,         // engine -> controller -> client; see ReplyMeta in body.h
  kEngineListReply = 41,   // controller -> client; segments: [JSON]
  kClusterStatusReply = 42,
  kClusterShutdownReply = 43,
  // engine -> controller -> client while a task runs: a chunk of its output, Envelope::flags
  // = 1 (stdout) or 2 (stderr), segments [UTF-8 text]. The final reply still has all of it.
  kTaskOutput = 44,
  // controller -> client, right after a request is accepted: its task ids (segments [ids]),
  // under which the results can be fetched later, also from another connection.
  kSubmitted = 45,

  kEngineShutdown = 50,  // controller -> engine: finish and exit

  // Task lifecycle: client -> controller.
  kAbort = 60,        // segments: [task ids to abort]; reply kAbortReply
  kInterrupt = 61,    // targets: engines whose running task to interrupt (SIGINT into Python)
  kQueueStatus = 62,  // reply kQueueStatusReply: [JSON]
  kAbortReply = 63,
  kInterruptReply = 64,
  kQueueStatusReply = 65,
  // Results that outlive connections (docs/threat-model.md F2, F3), for the requester's own
  // tasks only:
  kGetResult = 67,       // segments [task ids]; answered by one kTaskReply per id (task_id set)
  kResultStatus = 68,    // segments [task ids]; reply kResultStatusReply [JSON records]
  kDbQuery = 69,         // text: JSON filter {states, after_task_id, limit}; reply [JSON records]
  kPurgeResults = 70,    // segments [task ids] (none: every finished one); reply {"purged": n}
  kResultStatusReply = 71,
  kDbQueryReply = 72,
  kPurgeResultsReply = 73,
  // Key administration, allowed by the policy's "keys" operation:
  kKeyAdmin = 74,       // text: JSON {"action": "list"|"show"|"accept"|"reject"|"revoke", "who": "..."}
  kKeyAdminReply = 75,  // segments [JSON]: {"entries": [...]} or {"entry": {...}}; errors as RouteStatus
  // controller -> engine: raise KeyboardInterrupt in the task `task_id` if it is running.
  kEngineInterrupt = 66,
};
std::string_view kind_name(MessageKind kind);

// kExecute flag: send back the repr of a trailing expression's value.
inline constexpr std::uint16_t kExecuteDisplayResult = 1;
// Request flag (client -> controller, any task kind): one task that the scheduler places on
// one of `targets` (empty: any engine); Envelope::text carries the TaskOptions. The
// controller clears it before forwarding.
inline constexpr std::uint16_t kLoadBalanced = 0x8000;
// kTaskReply flag (engine -> controller): the user code raised. Lets the scheduler resolve
// dependencies without reading the body.
inline constexpr std::uint16_t kTaskFailed = 0x8000;
// The engine id of a load-balanced request's reply slot before an engine is known.
inline constexpr std::uint32_t kAnyEngine = 0xFFFFFFFFu;

// Value encodings for push/pull, in Envelope::flags.
enum class ValueFormat : std::uint16_t { kPickle = 0, kLiteral = 1 };

// Controller-level outcome of a request, in Envelope::status of a kTaskReply. kOk means the
// engine ran the request and the body is the engine's reply; anything else comes from the
// controller, with the reason in Envelope::text and no body.
enum class RouteStatus : std::uint16_t {
  kOk = 0,
  kNoSuchEngine = 1,
  kEngineDied = 2,
  kNotAllowed = 3,
  kShuttingDown = 4,
  kAborted = 5,
  kDependencyFailed = 6,   // ipyparallel's ImpossibleDependency
  kDependencyTimeout = 7,
  kUnreachable = 8,        // no engine may run it (allowed set, follow)
  kNoSuchTask = 9,         // get_result: unknown, purged, or another client's
  kLost = 10,              // the controller stopped before the task finished
  // kRejected: this identity is not (yet) trusted; an administrator may change that, so an
  // engine waits and retries rather than exiting.
  kAwaitingTrust = 11,
};

struct Envelope {
  MessageKind kind = MessageKind::kHeartbeat;
  std::uint16_t flags = 0;        // per kind; for kPush/kPull a ValueFormat
  std::uint16_t status = 0;       // RouteStatus on replies
  std::uint64_t request_id = 0;   // chosen by the client, echoed in replies
  std::uint64_t task_id = 0;      // chosen by the controller for the controller<->engine hop
  std::uint32_t client_id = 0;    // set by the controller; what a client sends is ignored
  std::uint32_t engine_id = 0;    // target (controller -> engine) or source (replies)
  std::vector<std::uint32_t> targets;  // client -> controller: engines to run on
  std::string text;               // short text: reasons, hello payload; bounded by the head size

  bool operator==(const Envelope&) const = default;
};

struct Message {
  Envelope envelope;
  std::vector<SharedBytes> segments;
};

// The head payload: Envelope plus segment sizes.
struct Head {
  Envelope envelope;
  std::vector<std::uint64_t> segment_sizes;
};

std::vector<std::byte> encode_head(const Envelope& envelope, std::span<const SharedBytes> segments);
// Checks every field and that the segment table respects `limits`, and that nothing trails.
StatusOr<Head> decode_head(std::span<const std::byte> payload, const Limits& limits);

// The explicit allowlist (docs/threat-model.md T17): may a peer of `sender` role send `kind` to its
// counterpart once authenticated? Before authentication only kHello (to the controller) and
// kWelcome/kRejected (from it) exist.
bool is_allowed_after_auth(Role sender, MessageKind kind);

}  // namespace testudo::wire
