#include "net/data_link.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>

#include "wire/byte_io.h"

namespace testudo::net {
namespace {

constexpr std::array<char, 9> kHelloMagic{'T', 'S', 'T', 'D', '-', 'B', 'U', 'L', 'K'};
constexpr std::uint8_t kHelloVersion = 1;

using Clock = std::chrono::steady_clock;

int remaining_ms(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return static_cast<int>(std::clamp<long long>(left, 0, 1'000'000'000));
}

// Waits until `fd` is ready for `events` or `timeout` passes: true when ready (or in error:
// the next call says which).
bool wait_for(int fd, short events, std::chrono::milliseconds timeout) {
  pollfd p{fd, events, 0};
  for (;;) {
    const int n = ::poll(&p, 1, static_cast<int>(timeout.count()));
    if (n > 0) return true;
    if (n == 0) return false;
    if (errno != EINTR) return true;
  }
}

std::string progress(std::uint64_t done, std::uint64_t total) {
  return "after " + std::to_string(done) + " of " + std::to_string(total) + " bytes";
}

StatusOr<UniqueFd> connect_to(const addrinfo& ai, Clock::time_point deadline) {
  UniqueFd fd(::socket(ai.ai_family, ai.ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai.ai_protocol));
  if (!fd.valid()) return unavailable(std::string("socket: ") + std::strerror(errno));
  const int one = 1;
  ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (::connect(fd.get(), ai.ai_addr, ai.ai_addrlen) != 0) {
    if (errno != EINPROGRESS) return unavailable(std::strerror(errno));
    if (!wait_for(fd.get(), POLLOUT, std::chrono::milliseconds(remaining_ms(deadline)))) {
      return unavailable("timed out connecting");
    }
    int err = 0;
    socklen_t len = sizeof err;
    ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) return unavailable(std::strerror(err));
  }
  return fd;
}

}  // namespace

std::string_view data_role_name(DataRole role) {
  return role == DataRole::kSender ? "sender" : "receiver";
}

std::array<std::byte, kDataHelloBytes> encode_data_hello(const DataHello& hello) {
  std::array<std::byte, kDataHelloBytes> out{};
  std::memcpy(out.data(), kHelloMagic.data(), kHelloMagic.size());
  out[9] = std::byte{kHelloVersion};
  out[10] = static_cast<std::byte>(hello.role);
  std::memcpy(out.data() + 11, hello.ticket.data(), kTicketBytes);
  return out;
}

StatusOr<DataHello> decode_data_hello(std::span<const std::byte> bytes) {
  if (bytes.size() != kDataHelloBytes) return data_loss("a data hello is " + std::to_string(kDataHelloBytes) + " bytes");
  if (std::memcmp(bytes.data(), kHelloMagic.data(), kHelloMagic.size()) != 0) return data_loss("not a data hello");
  if (bytes[9] != std::byte{kHelloVersion}) {
    return data_loss("unsupported data hello version " + std::to_string(static_cast<int>(bytes[9])));
  }
  const auto role = static_cast<std::uint8_t>(bytes[10]);
  if (role != static_cast<std::uint8_t>(DataRole::kSender) && role != static_cast<std::uint8_t>(DataRole::kReceiver)) {
    return data_loss("unknown data connection role " + std::to_string(role));
  }
  DataHello hello;
  hello.role = static_cast<DataRole>(role);
  std::memcpy(hello.ticket.data(), bytes.data() + 11, kTicketBytes);
  return hello;
}

bool may_start_data_hello(std::byte first) { return first == std::byte{'T'}; }

StatusOr<UniqueFd> dial_data(const std::string& host, std::uint16_t port, const DataHello& hello,
                             std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  const std::string where = host + ":" + std::to_string(port);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found); rc != 0) {
    return unavailable("data connection to " + where + ": " + ::gai_strerror(rc));
  }
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> list(found, &::freeaddrinfo);
  Status last = unavailable("no address");
  for (const addrinfo* ai = found; ai != nullptr; ai = ai->ai_next) {
    auto fd = connect_to(*ai, deadline);
    if (!fd.ok()) {
      last = fd.status();
      continue;
    }
    const auto bytes = encode_data_hello(hello);
    SharedBytes one = SharedBytes::copy_of(std::span<const std::byte>(bytes));
    if (Status sent = send_segments(fd->get(), std::span(&one, 1), timeout); !sent.ok()) return sent;
    return fd;
  }
  return unavailable("data connection to " + where + ": " + last.message());
}

std::optional<Ticket> ticket_in(const SharedBytes& segment) {
  if (segment.size() != kTicketBytes) return std::nullopt;
  Ticket ticket{};
  std::memcpy(ticket.data(), segment.data(), kTicketBytes);
  return ticket;
}

Status send_transfer(const std::string& host, std::uint16_t port, const DataHello& hello,
                     std::span<const SharedBytes> segments, std::chrono::milliseconds timeout) {
  TESTUDO_ASSIGN_OR_RETURN(UniqueFd fd, dial_data(host, port, hello, timeout));
  Status sent = send_segments(fd.get(), segments, kDataStallTimeout);
  ::shutdown(fd.get(), SHUT_WR);  // the relay sees the end; nothing unread makes close() reset
  return sent;
}

StatusOr<std::vector<SharedBytes>> receive_transfer(const std::string& host, std::uint16_t port, const DataHello& hello,
                                                    std::span<const std::uint64_t> sizes,
                                                    std::chrono::milliseconds timeout) {
  TESTUDO_ASSIGN_OR_RETURN(UniqueFd fd, dial_data(host, port, hello, timeout));
  return receive_segments(fd.get(), sizes, kDataStallTimeout);
}

Status send_segments(int fd, std::span<const SharedBytes> segments, std::chrono::milliseconds stall) {
  std::uint64_t total = 0;
  for (const SharedBytes& s : segments) total += s.size();
  std::uint64_t done = 0;
  std::size_t index = 0;
  std::size_t offset = 0;  // into segments[index]
  constexpr std::size_t kMaxIov = 64;
  while (index < segments.size()) {
    iovec iov[kMaxIov];
    int n = 0;
    for (std::size_t i = index; i < segments.size() && n < static_cast<int>(kMaxIov); ++i) {
      const std::size_t skip = i == index ? offset : 0;
      if (segments[i].size() == skip) continue;
      iov[n].iov_base = const_cast<std::byte*>(segments[i].data()) + skip;
      iov[n].iov_len = segments[i].size() - skip;
      ++n;
    }
    if (n == 0) break;
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = static_cast<std::size_t>(n);
    const ssize_t wrote = ::sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (wrote < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        if (!wait_for(fd, POLLOUT, stall)) return unavailable("stalled " + progress(done, total));
        continue;
      }
      return unavailable(std::string(std::strerror(errno)) + " " + progress(done, total));
    }
    done += static_cast<std::uint64_t>(wrote);
    std::size_t left = static_cast<std::size_t>(wrote);
    while (left > 0 && index < segments.size()) {
      const std::size_t in_this = segments[index].size() - offset;
      if (left < in_this) {
        offset += left;
        left = 0;
      } else {
        left -= in_this;
        ++index;
        offset = 0;
      }
    }
    while (index < segments.size() && segments[index].size() == offset) {
      ++index;
      offset = 0;
    }
  }
  return ok_status();
}

StatusOr<std::vector<SharedBytes>> receive_segments(int fd, std::span<const std::uint64_t> sizes,
                                                    std::chrono::milliseconds stall) {
  std::uint64_t total = 0;
  for (std::uint64_t s : sizes) total += s;
  std::vector<SharedBytes> out;
  out.reserve(sizes.size());
  std::uint64_t done = 0;
  for (std::uint64_t size : sizes) {
    SharedBytes segment = SharedBytes::allocate(static_cast<std::size_t>(size));
    std::size_t have = 0;
    while (have < size) {
      const ssize_t got = ::recv(fd, segment.data() + have, static_cast<std::size_t>(size) - have, MSG_DONTWAIT);
      if (got > 0) {
        have += static_cast<std::size_t>(got);
        done += static_cast<std::uint64_t>(got);
        continue;
      }
      if (got == 0) return unavailable("the data connection closed " + progress(done, total));
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        if (!wait_for(fd, POLLIN, stall)) return unavailable("stalled " + progress(done, total));
        continue;
      }
      return unavailable(std::string(std::strerror(errno)) + " " + progress(done, total));
    }
    out.push_back(std::move(segment));
  }
  return out;
}

SharedBytes encode_transfer_sizes(std::span<const std::uint64_t> sizes) {
  wire::ByteWriter w;
  w.u32(static_cast<std::uint32_t>(sizes.size()));
  for (std::uint64_t s : sizes) w.u64(s);
  return SharedBytes::copy_of(std::span<const std::byte>(w.buffer()));
}

StatusOr<std::vector<std::uint64_t>> decode_transfer_sizes(std::span<const std::byte> bytes, std::size_t max_segments,
                                                           std::uint64_t max_bytes) {
  wire::ByteReader r(bytes);
  const std::uint32_t count = r.u32();
  if (!r.ok() || count == 0 || count > max_segments) return data_loss("bad transfer segment count");
  if (r.remaining() != std::uint64_t{count} * 8) return data_loss("transfer sizes of the wrong length");
  std::vector<std::uint64_t> sizes;
  sizes.reserve(count);
  std::uint64_t total = 0;
  for (std::uint32_t i = 0; i < count; ++i) {
    const std::uint64_t s = r.u64();
    if (s > max_bytes || total + s > max_bytes) return data_loss("transfer larger than " + std::to_string(max_bytes) + " bytes");
    total += s;
    sizes.push_back(s);
  }
  return sizes;
}

}  // namespace testudo::net
