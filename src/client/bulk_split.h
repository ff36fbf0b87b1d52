// The client's side of the bulk path (wire/message.h, flags bit 13): which sealed requests
// send their bodies on data connections, what then stays on the control connection, and the
// sending itself, sealed as it goes.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "e2e/sealed_body.h"
#include "net/data_link.h"
#include "wire/message.h"
#include "testudo/shared_bytes.h"
#include "testudo/status.h"

namespace testudo::client {

// Whether a request body of `kind` (execute, push or apply) this large goes on data
// connections: at least `from_bytes` (> 0) bytes per target, and not empty.
bool goes_in_bulk(wire::MessageKind kind, std::span<const SharedBytes> body, std::uint64_t from_bytes);

// A bulk part as it travels on the control connection: [seal header (no tag yet), transfer
// sizes], the sizes being the body's segments' and then the tag's 16 bytes, which follow the
// ciphertext on the data connection.
std::vector<SharedBytes> bulk_control_part(const e2e::PreparedSeal& seal, std::span<const SharedBytes> body);

// A bulk part's body sealed while it is sent (docs/protocol.md "The bulk path", step 1): dials
// the controller with `hello`, encrypts `plaintext` under `seal` a chunk at a time and sends
// each chunk as it is ready, then the 16-byte GCM tag, which the engine puts back into the
// seal header before it opens the body. Nothing of the plaintext leaves unencrypted; the
// bytes sent are exactly the ciphertext e2e::seal_prepared would make, then its tag.
Status send_sealed_transfer(const std::string& host, std::uint16_t port, const net::DataHello& hello,
                            std::span<const SharedBytes> plaintext, const e2e::PreparedSeal& seal,
                            std::chrono::milliseconds timeout);

}  // namespace testudo::client
