#include "auth/login.h"

#include "auth/kerberos_login.h"
#include "auth/scram_login.h"
#include "auth/token_login.h"

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

StatusOr<LoginClientFactory> make_login_client_factory(LoginChoice choice, const std::string& controller_host) {
  switch (choice.method) {
    case LoginMethod::kKey:
      return invalid_argument("a key login needs no login exchange");
    case LoginMethod::kToken: {
      if (!choice.secret) return invalid_argument("a token login needs a token provider (--token-from, token_provider=)");
      auto provider = std::move(choice.secret);
      return LoginClientFactory([provider]() -> StatusOr<std::unique_ptr<LoginClient>> {
        return make_token_login_client(provider);
      });
    }
    case LoginMethod::kPassword: {
      if (choice.username.empty()) return invalid_argument("a password login needs a user name");
      if (Status st = check_user_name(choice.username); !st.ok()) return st;
      if (!choice.secret) return invalid_argument("a password login needs a password source");
      return LoginClientFactory([username = std::move(choice.username), secret = std::move(choice.secret)] {
        return make_scram_login_client(username, secret);
      });
    }
    case LoginMethod::kKerberos: {
      // The controller accepts as testudo/<the host in its connection file> unless told
      // otherwise (--service-principal on both sides).
      std::string service = choice.service.empty() ? default_kerberos_service(controller_host) : choice.service;
      return LoginClientFactory([service = std::move(service)]() -> StatusOr<std::unique_ptr<LoginClient>> {
        return make_kerberos_login_client(service);
      });
    }
  }
  return failed_precondition(std::string(login_method_name(choice.method)) + " logins are not built yet");
}

void LoginRegistry::add(LoginMethod method, Factory factory) { factories_[method] = std::move(factory); }

bool LoginRegistry::accepts(LoginMethod method) const { return factories_.count(method) != 0; }

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
