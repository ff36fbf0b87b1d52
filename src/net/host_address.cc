#include "net/host_address.h"

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <memory>

namespace testudo::net {

bool is_address_of_this_host(const std::string& host) {
  if (host.empty()) return false;
  addrinfo hints{};
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* found = nullptr;
  if (::getaddrinfo(host.c_str(), nullptr, &hints, &found) != 0) return false;
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> owned(found, &::freeaddrinfo);
  // Binding succeeds only for an address one of this machine's interfaces holds (port 0:
  // nothing is taken; the socket is closed at once). No packet is sent.
  for (const addrinfo* a = found; a != nullptr; a = a->ai_next) {
    const int fd = ::socket(a->ai_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) continue;
    const bool bound = ::bind(fd, a->ai_addr, a->ai_addrlen) == 0;
    ::close(fd);
    if (bound) return true;
  }
  return false;
}

}  // namespace testudo::net
