#include "cli/keys.h"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <fstream>
#include <iostream>

#include "auth/identity.h"
#include "base/profile.h"
#include "crypto/crypto.h"
#include "testudo/client.h"
#include "tls/tls.h"

namespace testudo::cli {
namespace {

int fail(const Status& st) {
  std::cerr << "testudo keys: " << st.message() << "\n";
  return st.code() == StatusCode::kInvalidArgument ? 2 : 1;
}

std::string time_text(std::int64_t unix_seconds) {
  if (unix_seconds <= 0) return "-";
  std::time_t t = unix_seconds;
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M", std::gmtime(&t));
  return buf;
}

void print_entry(const nlohmann::json& e) {
  std::printf("%-9s %-7s %s  %s%s%s\n", e.value("state", std::string()).c_str(), e.value("role", std::string()).c_str(),
              e.value("fingerprint", std::string()).c_str(), e.value("name", std::string()).c_str(),
              e.value("peer", std::string()).empty() ? "" : "  from ", e.value("peer", std::string()).c_str());
}

}  // namespace

struct KeysCommand::Impl {
  CLI::App* keys = nullptr;
  // create
  CLI::App* create = nullptr;
  std::string role = "client";
  std::string dir;
  std::string name;
  std::string common_name;
  int days = 3650;
  bool encrypt = false;
  std::string passphrase_from;
  bool force = false;
  // fingerprint
  CLI::App* fingerprint = nullptr;
  std::string pem_file;
  // remote
  CLI::App* list = nullptr;
  bool as_json = false;
  std::string connection_file;
  std::string who;
  std::vector<std::pair<std::string, CLI::App*>> actions;  // show, accept, reject, revoke

  int run_create() {
    if (role != "client" && role != "engine") return fail(invalid_argument("--role is client or engine"));
    const std::string where = dir.empty() ? testudo_home() + "/identity" : dir;
    const std::string file_name = name.empty() ? role : name;
    auth::CreateIdentityOptions o;
    o.common_name = common_name;
    o.valid_days = days;
    o.overwrite = force;
    if (encrypt || !passphrase_from.empty()) {
      auth::PassphraseSource from;
      if (!passphrase_from.empty()) {
        auto parsed = auth::parse_passphrase_source(passphrase_from);
        if (!parsed.ok()) return fail(parsed.status());
        from = *parsed;
      }
      auto passphrase = auth::read_passphrase(from, "the new key " + auth::identity_files(where, file_name).key_path,
                                              /*confirm=*/true);
      if (!passphrase.ok()) return fail(passphrase.status());
      o.passphrase = std::move(passphrase).value();
    }
    auto kc = auth::create_identity(where, file_name, o);
    if (o.passphrase) crypto::wipe(*o.passphrase);
    if (!kc.ok()) return fail(kc.status());
    auto fp = tls::key_fingerprint_of_pem(kc->cert_pem);
    if (!fp.ok()) return fail(fp.status());
    const auth::IdentityFiles files = auth::identity_files(where, file_name);
    std::cout << "created " << files.key_path << (o.passphrase ? " (encrypted)" : "") << " and " << files.cert_path
              << "\n"
              << *fp << "\n";
    return 0;
  }

  int run_fingerprint() {
    std::string path = pem_file.empty() ? auth::identity_files(testudo_home() + "/identity", "client").cert_path : pem_file;
    // A certificate or public key is not secret: read it whatever its mode.
    std::ifstream in(path);
    if (!in) return fail(not_found("cannot read " + path));
    std::string text((std::istreambuf_iterator<char>(in)), {});
    if (text.size() > (1 << 20)) return fail(invalid_argument(path + " is not a PEM certificate or public key"));
    auto fp = tls::key_fingerprint_of_pem(text);
    if (!fp.ok()) return fail(fp.status().with_context(path));
    std::cout << *fp << "\n";
    return 0;
  }

  int run_remote(const std::string& profile, const std::string& action) {
    ClientOptions o;
    o.profile = profile;
    o.connection_file = connection_file;
    auto client = Client::connect(o);
    if (!client.ok()) return fail(client.status());
    auto reply = (*client)->key_admin(action, who);
    if (!reply.ok()) return fail(reply.status());
    if (as_json) {
      std::cout << *reply << "\n";
      return 0;
    }
    auto j = nlohmann::json::parse(*reply, nullptr, false);
    if (j.is_discarded() || !j.is_object()) return fail(data_loss("malformed reply from the controller"));
    if (action == "list") {
      std::cout << "trust mode: " << j.value("mode", std::string("?")) << "\n";
      for (const auto& e : j["entries"]) print_entry(e);
      if (j["entries"].empty()) std::cout << "(no identities)\n";
      return 0;
    }
    const auto& e = j["entry"];
    if (action == "show") {
      print_entry(e);
      std::cout << "first seen: " << time_text(e.value("first_seen", std::int64_t{0})) << " UTC\n";
      if (!e.value("file", std::string()).empty()) std::cout << "file: " << e.value("file", std::string()) << "\n";
      return 0;
    }
    std::cout << action << (action.back() == 'e' ? "d " : "ed ") << e.value("role", std::string()) << " "
              << e.value("fingerprint", std::string()) << "\n";
    return 0;
  }
};

KeysCommand::KeysCommand(CLI::App& app) : impl_(std::make_unique<Impl>()) {
  Impl& i = *impl_;
  i.keys = app.add_subcommand("keys", "Identities: create and inspect keys; list, accept, reject, revoke them on the controller");
  i.keys->require_subcommand(1);
  i.keys->fallthrough();

  i.create = i.keys->add_subcommand("create", "Make a key pair and self-signed certificate (an identity)");
  i.create->add_option("--role", i.role, "client or engine")->capture_default_str();
  i.create->add_option("--dir", i.dir, "Directory (default: $TESTUDO_HOME/identity)");
  i.create->add_option("--name", i.name, "File name stem: <name>-key.pem, <name>-cert.pem (default: the role)");
  i.create->add_option("--cn", i.common_name, "Certificate common name, matched by policy 'cn:' rules");
  i.create->add_option("--days", i.days, "Validity of the certificate")->capture_default_str();
  i.create->add_flag("--encrypt", i.encrypt, "Encrypt the private key with a passphrase (asked on the terminal)");
  i.create->add_option("--key-passphrase-from", i.passphrase_from,
                       "Where the passphrase comes from: prompt, file:PATH, env:NAME or command:CMD (implies --encrypt)");
  i.create->add_flag("--force", i.force, "Replace an existing identity (its fingerprint changes)");

  i.fingerprint = i.keys->add_subcommand("fingerprint", "Print the key fingerprint of a certificate or public key");
  i.fingerprint->add_option("file", i.pem_file, "PEM file (default: your client certificate)");

  auto remote = [&](CLI::App* cmd) {
    cmd->add_option("--file", i.connection_file, "Client connection file (default: the profile's controller-client.json)");
    cmd->add_flag("--json", i.as_json, "Print the controller's JSON reply");
  };
  i.list = i.keys->add_subcommand("list", "List the identities the controller knows: accepted, pending, revoked");
  remote(i.list);
  for (const auto& [action, help] :
       std::vector<std::pair<std::string, std::string>>{{"show", "Show one identity"},
                                                        {"accept", "Admit a pending identity"},
                                                        {"reject", "Forget a pending identity"},
                                                        {"revoke", "Refuse an identity from now on and disconnect it"}}) {
    CLI::App* cmd = i.keys->add_subcommand(action, help);
    cmd->add_option("who", i.who, "Fingerprint, or a unique prefix of at least 8 hex digits")->required();
    remote(cmd);
    i.actions.emplace_back(action, cmd);
  }
}

KeysCommand::~KeysCommand() = default;

bool KeysCommand::chosen() const { return impl_->keys->parsed(); }

int KeysCommand::run(const std::string& profile) {
  Impl& i = *impl_;
  if (*i.create) return i.run_create();
  if (*i.fingerprint) return i.run_fingerprint();
  if (*i.list) return i.run_remote(profile, "list");
  for (const auto& [action, cmd] : i.actions) {
    if (*cmd) return i.run_remote(profile, action);
  }
  return 2;
}

}  // namespace testudo::cli
