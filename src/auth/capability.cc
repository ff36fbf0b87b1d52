#include "auth/capability.h"

#include <cstring>

#include "wire/byte_io.h"

namespace testudo::auth {

crypto::Digest capability_proof(const Capability& capability, wire::Role role, const crypto::Digest& exporter) {
  wire::ByteWriter w;
  w.bytes(crypto::as_bytes("testudo-capability-proof-v1"));
  w.u8(static_cast<std::uint8_t>(role));
  w.bytes(exporter);
  return crypto::hmac_sha256(capability, w.buffer());
}

std::string encode_hello(const Hello& hello) {
  wire::ByteWriter w;
  w.u8(static_cast<std::uint8_t>(hello.role));
  w.str(hello.instance);
  w.bytes(hello.proof);
  if (hello.login != LoginMethod::kKey) {
    w.u8(static_cast<std::uint8_t>(hello.login));
    w.str(hello.login_message);
  }
  auto& b = w.buffer();
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

StatusOr<Hello> decode_hello(std::string_view text) {
  wire::ByteReader r(crypto::as_bytes(text));
  Hello h;
  std::uint8_t role = r.u8();
  h.instance = r.str(kMaxInstanceBytes);
  if (!r.ok() || r.remaining() < h.proof.size()) return data_loss("malformed hello");
  for (auto& b : h.proof) b = static_cast<std::byte>(r.u8());
  if (r.remaining() > 0) {
    auto method = login_method_from_byte(r.u8());
    h.login_message = r.str(kMaxLoginMessageBytes);
    if (!r.ok() || r.remaining() != 0) return data_loss("malformed hello");
    if (!method || *method == LoginMethod::kKey) return data_loss("hello names an unknown login method");
    h.login = *method;
  }
  if (role != static_cast<std::uint8_t>(wire::Role::kClient) && role != static_cast<std::uint8_t>(wire::Role::kEngine)) {
    return data_loss("hello names an unknown role");
  }
  h.role = static_cast<wire::Role>(role);
  return h;
}

}  // namespace testudo::auth
