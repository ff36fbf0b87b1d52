// Data connections: the bulk path's second kind of connection (docs/protocol.md "The bulk
// path", docs/security.md "End-to-end sealing"). A client and an engine each dial the
// controller's one port and, instead of a TLS ClientHello, send a *data hello*: the magic
// "TSTD-BULK", a version, which end of the transfer this is, and a single-use ticket the
// controller issued for the transfer over their authenticated control connections. The
// controller pairs the two connections by ticket and moves the bytes between them without
// reading them (controller/bulk_relay.h). What travels is already sealed end to end
// (e2e/sealed_body.h), so the connection itself adds no TLS: an eavesdropper sees the ticket
// (useless once used) and ciphertext.
//
// The functions here are blocking and for the ends of a transfer (a client's or an engine's
// worker thread), never for an event loop.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "base/unique_fd.h"
#include "testudo/shared_bytes.h"
#include "testudo/status.h"

namespace testudo::net {

inline constexpr std::size_t kTicketBytes = 32;
using Ticket = std::array<std::byte, kTicketBytes>;

// Which end of a transfer a data connection is: the one whose bytes the controller reads, or
// the one it writes them to.
enum class DataRole : std::uint8_t { kSender = 1, kReceiver = 2 };
std::string_view data_role_name(DataRole role);

struct DataHello {
  DataRole role = DataRole::kSender;
  Ticket ticket{};
};

// "TSTD-BULK" | version u8 (1) | role u8 | ticket (32 bytes).
inline constexpr std::size_t kDataHelloBytes = 9 + 1 + 1 + kTicketBytes;
std::array<std::byte, kDataHelloBytes> encode_data_hello(const DataHello& hello);
// Exactly kDataHelloBytes; kDataLoss saying what is wrong otherwise.
StatusOr<DataHello> decode_data_hello(std::span<const std::byte> bytes);
// Whether a connection's first byte may start a data hello: 'T'. A TLS record starts with its
// content type (22 for a handshake), so one byte tells the two apart.
bool may_start_data_hello(std::byte first);

// A data connection on which no byte moves for this long is given up (both ends).
inline constexpr std::chrono::milliseconds kDataStallTimeout{60'000};

// The ticket in `segment` (as a kBulkTicket or a bulk part carries it), or nothing if it is
// not exactly a ticket's size.
std::optional<Ticket> ticket_in(const SharedBytes& segment);

// One end of a transfer, whole: dials host:port with `hello` (within `timeout`), then sends
// `segments` (role sender) or receives segments of `sizes` (role receiver), and closes.
Status send_transfer(const std::string& host, std::uint16_t port, const DataHello& hello,
                     std::span<const SharedBytes> segments, std::chrono::milliseconds timeout);
StatusOr<std::vector<SharedBytes>> receive_transfer(const std::string& host, std::uint16_t port, const DataHello& hello,
                                                    std::span<const std::uint64_t> sizes,
                                                    std::chrono::milliseconds timeout);

// Connects to host:port (TCP, no delay) and sends `hello`. kUnavailable on failure.
StatusOr<UniqueFd> dial_data(const std::string& host, std::uint16_t port, const DataHello& hello,
                             std::chrono::milliseconds timeout);

// Writes every byte of `segments`, in order. kUnavailable if the peer closes or no byte moves
// for `stall`; the message says how far it got.
Status send_segments(int fd, std::span<const SharedBytes> segments, std::chrono::milliseconds stall);

// Reads segments of exactly `sizes` (fresh buffers). kUnavailable if the peer closes early or
// no byte arrives for `stall`; the message says how far it got.
StatusOr<std::vector<SharedBytes>> receive_segments(int fd, std::span<const std::uint64_t> sizes,
                                                    std::chrono::milliseconds stall);

// A transfer's segment sizes as they travel on a control connection (a u32 count, then a u64
// each, little-endian), and back; decode refuses more than `max_segments` or a sum above
// `max_bytes`.
SharedBytes encode_transfer_sizes(std::span<const std::uint64_t> sizes);
StatusOr<std::vector<std::uint64_t>> decode_transfer_sizes(std::span<const std::byte> bytes, std::size_t max_segments,
                                                           std::uint64_t max_bytes);

}  // namespace testudo::net
