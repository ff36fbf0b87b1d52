#include "client/bulk_split.h"

#include <sys/socket.h>

#include <algorithm>

#include "crypto/aead.h"
#include "net/data_link.h"

namespace testudo::client {

bool goes_in_bulk(wire::MessageKind kind, std::span<const SharedBytes> body, std::uint64_t from_bytes) {
  if (from_bytes == 0 || (kind != wire::MessageKind::kExecute && kind != wire::MessageKind::kPush &&
                          kind != wire::MessageKind::kApply)) {
    return false;
  }
  std::uint64_t bytes = 0;
  for (const SharedBytes& segment : body) bytes += segment.size();
  return bytes > 0 && bytes >= from_bytes;
}

std::vector<SharedBytes> bulk_control_part(const e2e::PreparedSeal& seal, std::span<const SharedBytes> body) {
  std::vector<std::uint64_t> sizes = e2e::segment_sizes(body);
  sizes.push_back(crypto::kAeadTagBytes);
  return {e2e::encode_seal_header(seal.header), net::encode_transfer_sizes(sizes)};
}

Status send_sealed_transfer(const std::string& host, std::uint16_t port, const net::DataHello& hello,
                            std::span<const SharedBytes> plaintext, const e2e::PreparedSeal& seal,
                            std::chrono::milliseconds timeout) {
  TESTUDO_ASSIGN_OR_RETURN(UniqueFd fd, net::dial_data(host, port, hello, timeout));
  TESTUDO_ASSIGN_OR_RETURN(crypto::AeadSealStream stream, crypto::AeadSealStream::start(seal.key, seal.nonce, seal.aad));
  // A chunk is encrypted while the one before is still on its way (the socket's buffer, the
  // controller's pipe, the engine reading): sealing and moving overlap instead of following
  // each other. 1 MiB: large enough that a chunk costs one call each way, small enough to stay
  // in cache.
  constexpr std::size_t kChunk = 1u << 20;
  SharedBytes chunk = SharedBytes::allocate(kChunk);
  for (const SharedBytes& segment : plaintext) {
    for (std::size_t offset = 0; offset < segment.size(); offset += kChunk) {
      const std::size_t n = std::min(kChunk, segment.size() - offset);
      TESTUDO_RETURN_IF_ERROR(stream.update(segment.span().subspan(offset, n), chunk.mutable_span().first(n)));
      const SharedBytes piece[] = {SharedBytes::borrow(chunk.data(), n)};
      TESTUDO_RETURN_IF_ERROR(net::send_segments(fd.get(), piece, net::kDataStallTimeout));
    }
  }
  TESTUDO_ASSIGN_OR_RETURN(crypto::AeadTag tag, stream.finish());
  const SharedBytes tail[] = {SharedBytes::copy_of(std::span<const std::byte>(tag))};
  Status sent = net::send_segments(fd.get(), tail, net::kDataStallTimeout);
  ::shutdown(fd.get(), SHUT_WR);  // the relay sees the end; nothing unread makes close() reset
  return sent;
}

}  // namespace testudo::client
