#include "e2e/sealed_body.h"

#include <algorithm>
#include <iterator>

#include "wire/byte_io.h"

namespace testudo::e2e {
namespace {

constexpr std::string_view kMagic = "TSE1";
constexpr std::string_view kAadLabel = "testudo-sealed-body-v1";

crypto::AeadNonce nonce_of(const SealHeader& h) {
  crypto::AeadNonce nonce{};
  nonce[0] = static_cast<std::byte>(h.part);
  const std::uint64_t counter = h.part == Part::kOutput ? h.chunk : h.seq;
  for (int i = 0; i < 8; ++i) nonce[4 + i] = static_cast<std::byte>(counter >> (8 * i));
  return nonce;
}

std::vector<std::byte> associated_data(const SealHeader& h, const SealContext& c, std::span<const std::uint64_t> sizes) {
  wire::ByteWriter w;
  w.str(kAadLabel);
  w.u8(static_cast<std::uint8_t>(h.part));
  w.bytes(h.key_id);
  w.u64(h.seq);
  w.u64(h.chunk);
  w.bytes(h.code_digest);
  w.u16(static_cast<std::uint16_t>(c.kind));
  w.u16(c.flags);
  w.u32(c.engine_id);
  w.u16(c.outcome);
  w.u64(c.task_id);
  w.u32(static_cast<std::uint32_t>(sizes.size()));
  for (std::uint64_t size : sizes) w.u64(size);
  return w.take();
}

}  // namespace

std::vector<std::uint64_t> segment_sizes(std::span<const SharedBytes> body) {
  std::vector<std::uint64_t> sizes;
  sizes.reserve(body.size());
  for (const auto& s : body) sizes.push_back(s.size());
  return sizes;
}

SharedBytes encode_seal_header(const SealHeader& h) {
  wire::ByteWriter w;
  w.bytes(crypto::as_bytes(kMagic));
  w.u8(static_cast<std::uint8_t>(h.part));
  w.bytes(h.key_id);
  w.u64(h.seq);
  w.u64(h.chunk);
  w.bytes(h.code_digest);
  w.bytes(h.tag);
  w.str(h.offer);
  w.str(h.result_key);
  return SharedBytes::copy_of(w.buffer());
}

StatusOr<SealHeader> decode_seal_header(std::span<const std::byte> segment) {
  wire::ByteReader r(segment);
  auto magic = r.bytes(kMagic.size());
  if (!r.ok() || !std::equal(magic.begin(), magic.end(), crypto::as_bytes(kMagic).begin())) {
    return data_loss("not a sealed body (no seal header)");
  }
  SealHeader h;
  const std::uint8_t part = r.u8();
  if (part < 1 || part > 5) return data_loss("seal header names an unknown part " + std::to_string(part));
  h.part = static_cast<Part>(part);
  auto copy = [&r](auto& out) {
    auto b = r.bytes(out.size());
    if (r.ok()) std::copy(b.begin(), b.end(), out.begin());
  };
  copy(h.key_id);
  h.seq = r.u64();
  h.chunk = r.u64();
  copy(h.code_digest);
  copy(h.tag);
  h.offer = r.str(kMaxOfferBytes);
  h.result_key = r.str(kMaxOfferBytes);
  if (!r.ok()) return data_loss("truncated or oversized seal header");
  if (!r.at_end()) return data_loss("bytes after the seal header");
  if (!h.offer.empty() && h.part != Part::kRequest) return data_loss("a pair offer outside a request");
  if (!h.result_key.empty() && h.part != Part::kReply && h.part != Part::kBalancedReply) {
    return data_loss("a result key outside a reply");
  }
  if (h.part != Part::kOutput && h.chunk != 0) return data_loss("a chunk number outside an output chunk");
  return h;
}

crypto::Digest request_code_digest(wire::MessageKind kind, std::span<const SharedBytes> body) {
  if ((kind != wire::MessageKind::kExecute && kind != wire::MessageKind::kApply) || body.empty()) return {};
  return crypto::sha256(body[0].span());
}

namespace {

// Fresh buffers the sizes of `from` (appended to `out`), and the spans a cipher pass reads
// (`from`) and writes (the new buffers).
struct CipherPass {
  std::vector<std::span<const std::byte>> in;
  std::vector<std::span<std::byte>> out;
};
CipherPass buffers_for(std::span<const SharedBytes> from, std::vector<SharedBytes>& out) {
  CipherPass pass;
  for (const auto& segment : from) {
    out.push_back(SharedBytes::allocate(segment.size()));
    pass.in.push_back(segment.span());
    pass.out.push_back(out.back().mutable_span());
  }
  return pass;
}

}  // namespace

PreparedSeal prepare_seal(const PairKey& key, SealHeader header, const SealContext& context,
                          std::span<const SharedBytes> body) {
  header.key_id = key.id;
  PreparedSeal p;
  p.aad = associated_data(header, context, segment_sizes(body));
  p.nonce = nonce_of(header);
  p.key = key.key;
  p.header = std::move(header);
  return p;
}

StatusOr<std::vector<SharedBytes>> seal_prepared(PreparedSeal prepared, std::span<const SharedBytes> body) {
  std::vector<SharedBytes> out;
  out.reserve(body.size() + 1);
  out.emplace_back();  // the header, once the tag is known
  const CipherPass pass = buffers_for(body, out);
  TESTUDO_ASSIGN_OR_RETURN(prepared.header.tag,
                           crypto::aead_seal(prepared.key, prepared.nonce, prepared.aad, pass.in, pass.out));
  out[0] = encode_seal_header(prepared.header);
  return out;
}

StatusOr<std::vector<SharedBytes>> seal_body(const PairKey& key, SealHeader header, const SealContext& context,
                                             std::span<const SharedBytes> body) {
  return seal_prepared(prepare_seal(key, std::move(header), context, body), body);
}

StatusOr<std::vector<SharedBytes>> open_body(const PairKey& key, const SealHeader& header, const SealContext& context,
                                             std::span<const SharedBytes> sealed) {
  // Shared handles: the caller still holds every segment, so each opens into a new buffer.
  return open_body(key, header, context, std::vector<SharedBytes>(sealed.begin(), sealed.end()));
}

std::vector<SharedBytes> take_sealed_body(wire::Message& m) {
  std::vector<SharedBytes> body(std::make_move_iterator(m.segments.begin() + 1), std::make_move_iterator(m.segments.end()));
  m.segments.resize(1);
  return body;
}

StatusOr<std::vector<SharedBytes>> open_body(const PairKey& key, const SealHeader& header, const SealContext& context,
                                             std::vector<SharedBytes>&& sealed) {
  if (header.key_id != key.id) return permission_denied("sealed under another pair key");
  const std::vector<std::byte> aad = associated_data(header, context, segment_sizes(sealed));
  std::vector<SharedBytes> out;
  out.reserve(sealed.size());
  CipherPass pass;
  for (SharedBytes& segment : sealed) {
    out.push_back(segment.sole_owner() ? segment : SharedBytes::allocate(segment.size()));
    pass.in.push_back(segment.span());
    pass.out.push_back(out.back().mutable_span());
  }
  Status opened = crypto::aead_open(key.key, nonce_of(header), aad, pass.in, pass.out, header.tag);
  sealed.clear();  // after the pass, which reads the others' bytes
  if (!opened.ok()) return opened;
  return out;
}

}  // namespace testudo::e2e
