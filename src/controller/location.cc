#include "controller/location.h"

#include <unistd.h>

#include <climits>

namespace testudo::controller {

bool is_wildcard_address(std::string_view ip) { return ip == "0.0.0.0" || ip == "::" || ip == "*"; }

std::string bind_address(std::string_view ip) { return ip == "*" ? std::string("0.0.0.0") : std::string(ip); }

StatusOr<std::string> connection_address(std::string_view ip, std::string_view location, std::string_view host_name) {
  if (!location.empty()) return std::string(location);
  if (!is_wildcard_address(ip)) return std::string(ip);
  if (host_name.empty()) {
    return failed_precondition("the controller listens on every interface (--ip " + std::string(ip) +
                               ") but this host's name is unknown: pass --location with the address clients and "
                               "engines should dial");
  }
  return std::string(host_name);
}

std::string this_host_name() {
  char name[HOST_NAME_MAX + 1] = {};
  if (::gethostname(name, sizeof name - 1) != 0) return {};
  return name;
}

}  // namespace testudo::controller
