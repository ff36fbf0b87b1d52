// End-to-end sealed bodies (docs/e2e-design.md, docs/security.md "End-to-end sealing"): a
// request's body sealed by the client for one engine, that engine's reply and live output
// sealed for the client, each under the client–engine *pair key* (pair_offer.h). The
// controller routes on the envelope and relays the sealed segments; it can neither read nor
// alter them unnoticed.
//
// A sealed body is the segments [seal header, ciphertext of each plaintext segment...]: one
// AES-256-GCM message over all plaintext segments (crypto/aead.h), so a body keeps its shape
// and large segments are encrypted in place of a copy, never concatenated.
//
// What must hold:
//  * The nonce is (part, counter): requests count with the client's per-key sequence number,
//    replies reuse their request's (an engine runs a sequence number at most once:
//    replay_window.h), output chunks count with the engine's per-key chunk counter. So a
//    (key, nonce) pair is never used twice.
//  * The associated data names everything a relay could change to mislead the receiver: the
//    part, key id, sequence number, chunk, code digest, message kind and flags, the engine id
//    (the target of a request, the source of a reply), the outcome and task id of a reply,
//    and the number and sizes of the segments. A body moved to another engine, request, kind or
//    outcome fails to open.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "base/shared_bytes.h"
#include "crypto/aead.h"
#include "crypto/crypto.h"
#include "testudo/status.h"
#include "wire/message.h"

namespace testudo::e2e {

inline constexpr std::size_t kKeyIdBytes = 16;
using KeyId = std::array<std::byte, kKeyIdBytes>;

// A client–engine pair key: random, made by the client per (client process, engine), sent to
// the engine once in a pair offer sealed to that engine's seal key.
struct PairKey {
  KeyId id{};
  crypto::AeadKey key{};
};

// A direct request is sealed under the pair key of its one engine; a load-balanced one under
// the client's balanced key, which every engine it paired with holds (pair_offer.h), with the
// engine id left open (wire::kAnyEngine) in its associated data. Every reply and output
// chunk is sealed under the pair key of the engine that ran it; a balanced request's reply
// has its own part, so its nonce never meets a direct reply's under that key.
enum class Part : std::uint8_t { kRequest = 1, kReply = 2, kOutput = 3, kBalancedRequest = 4, kBalancedReply = 5 };

// Segment 0 of a sealed body. Readable by anyone (the controller logs `code_digest`); its
// fields are authenticated through the associated data, the tag closes the message.
struct SealHeader {
  Part part = Part::kRequest;
  KeyId key_id{};
  std::uint64_t seq = 0;    // the request's sequence number (requests, replies, output)
  std::uint64_t chunk = 0;  // output chunks: the engine's counter; 0 otherwise
  // Requests: SHA-256 of the code (execute) or of the pickled call (apply), as the audit log
  // records it; the engine checks it against what it opened. Zero otherwise.
  crypto::Digest code_digest{};
  crypto::AeadTag tag{};
  // Direct requests: a pair offer (pair_offer.h) until the engine has answered under this key.
  std::string offer;
  // Replies: the grant of the result key they are sealed under (result_key.h), so that any
  // process of the client's identity can open them later.
  std::string result_key;
};
inline constexpr std::size_t kMaxOfferBytes = 16u << 10;

SharedBytes encode_seal_header(const SealHeader& header);
// Strict: magic, a known part, the fixed fields, an offer of at most kMaxOfferBytes (only on
// a request), nothing trailing. Pure; fuzzed (fuzz/sealed_header_fuzz.cc).
StatusOr<SealHeader> decode_seal_header(std::span<const std::byte> segment);

// The envelope facts a sealed body is bound to (see the associated data above).
struct SealContext {
  wire::MessageKind kind = wire::MessageKind::kExecute;  // the request's kind (replies too)
  std::uint16_t flags = 0;       // a request's forwarded flags; an output chunk's stream
  std::uint32_t engine_id = 0;   // the target (request) or the engine that answered
  std::uint16_t outcome = 0;     // a reply's Outcome (kOk or kPythonError); 0 otherwise
  std::uint64_t task_id = 0;     // a reply's task (the controller's id); 0 otherwise
};

// The code digest a request of `kind` carries (see SealHeader::code_digest).
crypto::Digest request_code_digest(wire::MessageKind kind, std::span<const SharedBytes> body);

// [encoded header, ciphertext segments...] of `body`; `header.tag` is filled in here.
StatusOr<std::vector<SharedBytes>> seal_body(const PairKey& key, SealHeader header, const SealContext& context,
                                             std::span<const SharedBytes> body);

// A body to be sealed later, piece by piece, as it is sent (the bulk path, docs/protocol.md
// "The bulk path"): its header (key id set, tag not yet known) and what the cipher needs. The
// same bytes and tag as seal_body of the same body; the tag then travels after the
// ciphertext instead of in the header.
struct PreparedSeal {
  SealHeader header;
  crypto::AeadKey key{};
  crypto::AeadNonce nonce{};
  std::vector<std::byte> aad;
};
PreparedSeal prepare_seal(const PairKey& key, SealHeader header, const SealContext& context,
                          std::span<const SharedBytes> body);
// The sizes of a body's segments, in order (what the associated data and transfer sizes name).
std::vector<std::uint64_t> segment_sizes(std::span<const SharedBytes> body);
// seal_body of a prepared body (whose sizes must be the ones it was prepared for).
StatusOr<std::vector<SharedBytes>> seal_prepared(PreparedSeal prepared, std::span<const SharedBytes> body);

// The plaintext segments of `sealed` (a sealed body without its header segment), under the
// header already decoded and `context` as the receiver expects it. kPermissionDenied when
// anything was altered or the body was made for another context.
StatusOr<std::vector<SharedBytes>> open_body(const PairKey& key, const SealHeader& header, const SealContext& context,
                                             std::span<const SharedBytes> sealed);
// The same, consuming `sealed`: a segment it holds the only reference to is decrypted where
// it lies (a received 1 GB body costs no second GB), any other into a new buffer. After a
// refusal the buffers hold nothing usable, which is why they are taken, not lent.
StatusOr<std::vector<SharedBytes>> open_body(const PairKey& key, const SealHeader& header, const SealContext& context,
                                             std::vector<SharedBytes>&& sealed);
// A sealed message's body (every segment after its seal header, which must be there), taken
// out of it to be opened in place: the message keeps only its header.
std::vector<SharedBytes> take_sealed_body(wire::Message& m);

}  // namespace testudo::e2e
