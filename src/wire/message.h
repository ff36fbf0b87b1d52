// testudo's wire protocol, version 1.
//
// A connection (one TLS session per peer) carries messages. A message is
//   Envelope   — the routing header: kind, ids, targets, outcome. Read by the
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
//
// Overtaking (flags bit 0): a small message whose place in the order does not matter
// (may_overtake: heartbeats and their acks, interrupts, status queries) may be sent between
// two frames of a large message whose sending has begun, so liveness and control do not wait
// behind a gigabyte. Its frames (head, then its data frames) all carry the bit and follow one
// another; the receiver delivers it at once and then goes on with the large message. The bit
// is refused anywhere else: outside a message in progress, inside an overtaking message, or
// on a kind that may not overtake.
//
// Abandoned (flags bit 1): an empty data frame that ends the message in progress unfinished.
// A relay that forwards a large message while it arrives (the controller, see
// wire/assembler.h "Streaming") sends it when the sender of that message went away halfway;
// the receiver drops what it had of the message and reads on. Refused outside a message in
// progress, inside or on an overtaking message, and with a payload.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/shared_bytes.h"
#include "testudo/outcome.h"
#include "testudo/status.h"

namespace testudo::wire {

inline constexpr std::array<std::byte, 4> kMagic{std::byte{'T'}, std::byte{'S'}, std::byte{'T'}, std::byte{'U'}};
inline constexpr std::uint8_t kProtocolVersion = 1;
inline constexpr std::size_t kFrameHeaderBytes = 12;

enum class FrameType : std::uint8_t { kHead = 1, kData = 2 };

struct FrameHeader {
  FrameType type = FrameType::kHead;
  std::uint32_t length = 0;  // payload bytes that follow the header
  bool overtaking = false;   // flags bit 0: part of a message sent inside another (see above)
  bool abandons = false;     // flags bit 1: the message in progress ends here, unfinished
};

// Size bounds one connection enforces on what it receives. A peer that has not yet
// authenticated gets kPreAuth: one small head, no body.
struct Limits {
  std::uint32_t max_frame_bytes = 1u << 20;          // 1 MiB per frame (and per read)
  std::uint32_t max_head_bytes = 64u << 10;           // envelope + segment table
  std::uint32_t max_segments = 4096;
  std::uint64_t max_message_bytes = 4ull << 30;       // sum of a message's segments (4 GiB)

  static Limits pre_auth() { return Limits{16u << 10, 16u << 10, 0, 0}; }
};

std::array<std::byte, kFrameHeaderBytes> encode_frame_header(const FrameHeader& header);
// Checks magic, version, type, flags (must be 0) and length <= limits.max_frame_bytes
// (and <= max_head_bytes for a head) — before the caller reads or allocates the payload.
StatusOr<FrameHeader> decode_frame_header(std::span<const std::byte, kFrameHeaderBytes> bytes, const Limits& limits);

// Who sent a message. Each role has its own allowlist of kinds (see is_allowed).
enum class Role : std::uint8_t { kClient = 1, kEngine = 2, kController = 3 };
std::string_view role_name(Role role);

enum class MessageKind : std::uint16_t {
  // Handshake. A peer's first message is kHello; only a login (kLoginStep) may follow it
  // before the welcome.
  kHello = 1,     // client/engine -> controller: role and capability proof (auth/)
  kWelcome = 2,   // controller -> peer: accepted; envelope.engine_id / client_id assigned
  kRejected = 3,  // controller -> peer: envelope.text says why; the connection closes
  // Both ways, between a hello that names a login method and the welcome: the next message
  // of that login (auth/login.h), its bytes in Envelope::text.
  kLoginStep = 4,

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
  // engine -> controller -> client while a task runs: a chunk of its output (Envelope::
  // output_stream()), segments [UTF-8 text]. The final reply still has all of it.
  kTaskOutput = 44,
  // controller -> client, right after a request is accepted: its task ids (segments [ids]),
  // under which the results can be fetched later, also from another connection.
  kSubmitted = 45,
  // controller -> client, as each task of a bulk request (flags bit 13 below) leaves for its
  // engine (after the request's kSubmitted): [ticket], task_id and engine_id set: the
  // single-use data-connection ticket for that task's sealed body (net/data_link.h).
  // controller -> engine, after a bulk kTaskReply: [ticket] for its ciphertext (task_id set),
  // or no segment: send the reply whole instead.
  kBulkTicket = 46,

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
  kKeyAdminReply = 75,  // segments [JSON]: {"entries": [...]} or {"entry": {...}}; errors as an outcome
  // controller -> engine: raise KeyboardInterrupt in the task `task_id` if it is running.
  kEngineInterrupt = 66,
  // controller -> engine: drop the task `task_id` if it was sent but has not started; the
  // engine answers it with a kTaskReply whose outcome is kAborted (a running one goes on).
  kEngineAbort = 76,
};
std::string_view kind_name(MessageKind kind);

// Whether a message of `kind` may overtake a large message already being sent on the same
// connection (see "Overtaking" above). True only for kinds whose effect does not depend on
// what was sent before them on that connection: heartbeats and acks, interrupts (they name a
// running task or engine), and read-only status queries and their replies. Never a task
// request, reply, output chunk, abort or shutdown: those keep their order.
bool may_overtake(MessageKind kind);

// The kind-dependent head fields, read and written only through Envelope's typed accessors:
//   flags   kExecute: bit 0 = send back the repr of a trailing expression's value
//           kPush, kPull: the ValueFormat
//           kExecute/kPush/kPull/kApply from a client: bit 15 = load balanced (one task the
//             scheduler places; Envelope::text carries the TaskOptions). The controller
//             clears it and forwards the rest unread.
//           kExecute/kPush/kPull/kApply: bit 14 = sealed end to end (e2e/sealed_body.h): the
//             segments are, per target in target order, [seal header, ciphertext...], the
//             same number for every target; the controller gives each engine its own part.
//           kExecute/kPush/kApply, sealed: bit 13 = bulk (docs/protocol.md "The bulk path"):
//             each target's part (the one part of a load-balanced request) is [seal header,
//             transfer sizes] from the client and [seal header, transfer sizes, ticket] to the
//             engine; the ciphertext segments of that part travel on a pair of data
//             connections the controller splices (for each dispatch: a retried task gets a
//             new ticket, and its client sends the body again).
//           kTaskReply: bit 13 = bulk, for a sealed reply: [seal header, transfer sizes] from
//             an engine (its ciphertext goes into the task store's file on a data connection
//             once the controller answers with a kBulkTicket), [seal header, transfer sizes,
//             ticket] to a client (which fetches the ciphertext from that file).
//           kTaskOutput: the OutputStream
//           every other kind: 0
//   status  the Outcome (testudo/outcome.h) of kTaskReply, kRejected and every control reply
//           (kEngineListReply ... kKeyAdminReply); kOk on every other kind. A task reply from
//           an engine says kOk or kPythonError (the scheduler resolves dependencies without
//           reading the body); one from the controller may say any outcome that travels,
//           with the reason in Envelope::text and no body unless kOk or kPythonError.
// decode_head() rejects a head whose fields break these rules (an unknown outcome number, a
// local outcome, a flag a kind does not have): a malformed message, never a guess.

// The engine id of a load-balanced request's reply slot before an engine is known.
inline constexpr std::uint32_t kAnyEngine = 0xFFFFFFFFu;

// Value encodings for push/pull.
enum class ValueFormat : std::uint16_t { kPickle = 0, kLiteral = 1 };

// Which stream a kTaskOutput chunk comes from.
enum class OutputStream : std::uint16_t { kStdout = 1, kStderr = 2 };

// Whether `kind`'s head carries an outcome other than kOk (see above).
bool carries_outcome(MessageKind kind);

struct Head;

struct Envelope {
  MessageKind kind = MessageKind::kHeartbeat;
  std::uint64_t request_id = 0;   // chosen by the client, echoed in replies
  std::uint64_t task_id = 0;      // chosen by the controller for the controller<->engine hop
  std::uint32_t client_id = 0;    // set by the controller; what a client sends is ignored
  std::uint32_t engine_id = 0;    // target (controller -> engine) or source (replies)
  std::vector<std::uint32_t> targets;  // client -> controller: engines to run on
  std::string text;               // short text: reasons, hello payload; bounded by the head size

  // Replies and rejections: what became of the request.
  Outcome outcome() const { return outcome_; }
  void set_outcome(Outcome outcome) { outcome_ = outcome; }

  // kExecute: send back the repr of a trailing expression's value.
  bool display_result() const { return (flags_ & kDisplayResultBit) != 0; }
  void set_display_result(bool on) { set_bit(kDisplayResultBit, on); }
  // kPush, kPull.
  ValueFormat value_format() const { return static_cast<ValueFormat>(kind_flags()); }
  void set_value_format(ValueFormat format) {
    flags_ = static_cast<std::uint16_t>((flags_ & (kLoadBalancedBit | kSealedBit | kBulkBit)) |
                                        static_cast<std::uint16_t>(format));
  }
  // Task requests from a client: one task for the scheduler to place.
  bool load_balanced() const { return (flags_ & kLoadBalancedBit) != 0; }
  void set_load_balanced(bool on) { set_bit(kLoadBalancedBit, on); }
  // Task requests whose body is sealed end to end (see above).
  bool sealed() const { return (flags_ & kSealedBit) != 0; }
  void set_sealed(bool on) { set_bit(kSealedBit, on); }
  // A task request's per-kind options alone (display result, value format): what a sealed
  // body is bound to (e2e/sealed_body.h).
  std::uint16_t kind_flags() const { return flags_ & ~(kLoadBalancedBit | kSealedBit | kBulkBit); }
  // Sealed direct requests whose bodies travel on data connections (see above).
  bool bulk() const { return (flags_ & kBulkBit) != 0; }
  void set_bulk(bool on) { set_bit(kBulkBit, on); }
  // kTaskOutput.
  OutputStream output_stream() const { return static_cast<OutputStream>(flags_); }
  void set_output_stream(OutputStream stream) { flags_ = static_cast<std::uint16_t>(stream); }
  // A task request's per-kind options (display result, value format) and the sealed bit,
  // without the load-balanced bit: what the controller keeps and forwards to the engine.
  std::uint16_t forwarded_flags() const { return flags_ & ~kLoadBalancedBit; }
  void set_forwarded_flags(std::uint16_t flags) { flags_ = flags & ~kLoadBalancedBit; }

  bool operator==(const Envelope&) const = default;

 private:
  friend std::vector<std::byte> encode_head(const Envelope& envelope, std::span<const SharedBytes> segments);
  friend std::vector<std::byte> encode_head_sized(const Envelope& envelope, std::span<const std::uint64_t> segment_sizes);
  friend StatusOr<Head> decode_head(std::span<const std::byte> payload, const Limits& limits);

  static constexpr std::uint16_t kDisplayResultBit = 1;
  static constexpr std::uint16_t kLoadBalancedBit = 0x8000;
  static constexpr std::uint16_t kSealedBit = 0x4000;
  static constexpr std::uint16_t kBulkBit = 0x2000;
  void set_bit(std::uint16_t bit, bool on) { flags_ = static_cast<std::uint16_t>(on ? flags_ | bit : flags_ & ~bit); }

  std::uint16_t flags_ = 0;
  Outcome outcome_ = Outcome::kOk;
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
// The same head for segments of these sizes (a relay announcing segments still arriving).
std::vector<std::byte> encode_head_sized(const Envelope& envelope, std::span<const std::uint64_t> segment_sizes);
// Checks every field (the kind-dependent ones as described above) and that the segment table
// respects `limits`, and that nothing trails.
StatusOr<Head> decode_head(std::span<const std::byte> payload, const Limits& limits);

// Whether a receiver under `limits` accepts this message: its head size, segment count and
// body size (decode_head's limits), checked by a sender before it sends. kResourceExhausted
// says which limit it breaks.
Status check_outgoing(const Envelope& envelope, std::span<const SharedBytes> segments, const Limits& limits);

// The explicit allowlist (docs/threat-model.md T17): may a peer of `sender` role send `kind` to its
// counterpart once authenticated? Before authentication only kHello and kLoginStep (to the
// controller) and kLoginStep, kWelcome and kRejected (from it) exist.
bool is_allowed_after_auth(Role sender, MessageKind kind);

}  // namespace testudo::wire
