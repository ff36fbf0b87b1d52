#include "auth/login.h"

namespace testudo::auth {

std::string_view login_method_name(LoginMethod method) {
  switch (method) {
    case LoginMethod::kKey: return "key";
    case LoginMethod::kPassword: return "password";
    case LoginMethod::kToken: return "token";
    case LoginMethod::kKerberos: return "kerberos";
  }
  return "unknown";
}

std::optional<LoginMethod> login_method_from_byte(std::uint8_t b) {
  if (b > static_cast<std::uint8_t>(LoginMethod::kKerberos)) return std::nullopt;
  return static_cast<LoginMethod>(b);
}

std::optional<LoginMethod> login_method_from_name(std::string_view name) {
  if (name.empty()) return LoginMethod::kKey;
  for (auto m : {LoginMethod::kKey, LoginMethod::kPassword, LoginMethod::kToken, LoginMethod::kKerberos}) {
    if (login_method_name(m) == name) return m;
  }
  return std::nullopt;
}

void LoginRegistry::add(LoginMethod method, Factory factory) { factories_[method] = std::move(factory); }

bool LoginRegistry::accepts(LoginMethod method) const { return factories_.count(method) != 0; }

std::vector<std::string> LoginRegistry::accepted() const {
  std::vector<std::string> out;
  for (const auto& [method, factory] : factories_) out.emplace_back(login_method_name(method));
  return out;
}

std::string LoginRegistry::accepted_names() const {
  std::string out;
  for (const auto& [method, factory] : factories_) {
    if (!out.empty()) out += ", ";
    out += login_method_name(method);
  }
  return out;
}

StatusOr<std::unique_ptr<LoginServer>> LoginRegistry::begin(LoginMethod method, const ChannelBinding& binding) const {
  auto it = factories_.find(method);
  if (it == factories_.end()) {
    const std::string accepted = accepted_names();
    return invalid_argument("this controller does not accept " + std::string(login_method_name(method)) +
                            " logins (" + (accepted.empty() ? "keys only" : "it accepts keys and " + accepted) + ")");
  }
  return it->second(binding);
}

}  // namespace testudo::auth
