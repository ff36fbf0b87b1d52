// Where the controller listens and what address its connection files give to clients and
// engines: two different things once the controller listens on every interface.
// Pure functions except for the host name lookup; thread-safe.
#pragma once

#include <string>
#include <string_view>

#include "testudo/status.h"

namespace testudo::controller {

// True for the addresses that mean "every interface": "0.0.0.0", "::" and ipyparallel's "*".
bool is_wildcard_address(std::string_view ip);

// The address to bind for `ip`: "*" becomes "0.0.0.0"; anything else is used as given.
std::string bind_address(std::string_view ip);

// The address written into the connection files:
//  * `location` when given (a name or address others reach this host by: behind NAT, a DNS
//    name, a tunnel's end);
//  * for a wildcard `ip`, this host's name (`host_name`, normally gethostname()): "0.0.0.0"
//    is no address a client on another host can dial;
//  * otherwise `ip` itself (loopback, or the one interface the controller listens on).
// kFailedPrecondition when a wildcard ip meets an empty host name, saying to pass --location.
StatusOr<std::string> connection_address(std::string_view ip, std::string_view location, std::string_view host_name);

// This machine's host name (gethostname); empty if it cannot be read.
std::string this_host_name();

}  // namespace testudo::controller
