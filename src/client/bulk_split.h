// The client's side of the bulk path's message shape (wire/message.h, flags bit 13): which
// sealed requests send their bodies on data connections, and what then stays on the control
// connection.
#pragma once

#include <cstdint>
#include <vector>

#include "testudo/shared_bytes.h"

namespace testudo::client {

// `segments`: a sealed direct request, one equal part per target ([seal header, ciphertext
// segments...]). If every part's ciphertext is at least `from_bytes` (and not empty), each
// part is rewritten in place to [seal header, transfer sizes] and the ciphertext segments are
// returned, per target in order; otherwise `segments` stay as they are and nothing is
// returned.
std::vector<std::vector<SharedBytes>> split_for_bulk(std::vector<SharedBytes>& segments, std::size_t targets,
                                                     std::uint64_t from_bytes);

}  // namespace testudo::client
