// Whether a host name or address names this machine: what decides if a client on the
// controller's own host skips the SSH gateway of a connection file (as ipyparallel's does).
// Thread-safe (getaddrinfo and socket calls only).
#pragma once

#include <string>

namespace testudo::net {

// True if `host` (a name or an address) resolves to an address of one of this machine's
// interfaces, loopback included: one that a socket can bind. False if it does not resolve.
bool is_address_of_this_host(const std::string& host);

}  // namespace testudo::net
