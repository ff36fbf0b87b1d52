#include "auth/user_file.h"

#include <gsasl.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "auth/strict_json.h"
#include "base/log.h"
#include "crypto/private_file.h"

namespace testudo::auth {
namespace {

using nlohmann::json;

Status check_name(std::string_view what, std::string_view name) {
  if (name.empty() || name.size() > kMaxUserNameBytes) {
    return invalid_argument(std::string(what) + " must be 1.." + std::to_string(kMaxUserNameBytes) + " bytes");
  }
  const auto alnum = [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
  };
  if (!alnum(name.front())) {
    return invalid_argument(std::string(what) + " " + quoted_for_error(std::string(name)) +
                            " must start with a letter or a digit");
  }
  for (char c : name) {
    if (!alnum(c) && c != '.' && c != '_' && c != '@' && c != '-') {
      return invalid_argument(std::string(what) + " " + quoted_for_error(std::string(name)) +
                              " may hold only letters, digits and . _ @ -");
    }
  }
  return ok_status();
}

StatusOr<std::vector<std::byte>> base64_at(const std::string& path, const json& j, std::size_t min_bytes,
                                           std::size_t max_bytes) {
  if (!j.is_string()) return error_at(path, std::string("must be a base64 string, not ") + j.type_name());
  auto bytes = crypto::from_base64(j.get_ref<const std::string&>());
  if (!bytes.ok()) return error_at(path, bytes.status().message());
  if (bytes->size() < min_bytes || bytes->size() > max_bytes) {
    return error_at(path, "must hold " +
                              (min_bytes == max_bytes ? std::to_string(min_bytes)
                                                      : std::to_string(min_bytes) + ".." + std::to_string(max_bytes)) +
                              " bytes, not " + std::to_string(bytes->size()));
  }
  return bytes;
}

StatusOr<crypto::Digest> digest_at(const std::string& path, const json& j) {
  TESTUDO_ASSIGN_OR_RETURN(auto bytes, base64_at(path, j, 32, 32));
  crypto::Digest d;
  std::copy(bytes.begin(), bytes.end(), d.begin());
  return d;
}

crypto::Digest derive(const crypto::Digest& key, std::string_view label, std::string_view name) {
  std::string input(label);
  input.push_back('\0');
  input.append(name);
  return crypto::hmac_sha256(key, crypto::as_bytes(input));
}

// Owns a string gsasl allocated; wipes it (it may be a prepared password) before freeing it.
struct GsaslString {
  char* p = nullptr;
  ~GsaslString() {
    if (p != nullptr) {
      crypto::wipe(std::as_writable_bytes(std::span(p, std::strlen(p))));
      gsasl_free(p);
    }
  }
};

}  // namespace

Status check_user_name(std::string_view name) { return check_name("user name", name); }
Status check_group_name(std::string_view name) { return check_name("group name", name); }

StatusOr<crypto::Digest> scram_salted_password(std::string_view password, std::span<const std::byte> salt,
                                               std::uint32_t iterations) {
  if (iterations < kMinScramIterations || iterations > kMaxScramIterations) {
    return invalid_argument("iteration count " + std::to_string(iterations) + " is outside " +
                            std::to_string(kMinScramIterations) + ".." + std::to_string(kMaxScramIterations));
  }
  if (password.empty()) return invalid_argument("the password is empty");
  if (password.find('\0') != std::string_view::npos) return invalid_argument("the password holds a NUL character");
  // RFC 5802: Normalize(password) is SASLprep (RFC 4013) with unassigned code points refused,
  // as for stored strings; gsasl's own SCRAM client does the same.
  std::string copy(password);
  GsaslString prepared;
  int stringprep_rc = 0;
  const int rc = gsasl_saslprep(copy.c_str(), static_cast<Gsasl_saslprep_flags>(0), &prepared.p, &stringprep_rc);
  crypto::wipe(copy);
  if (rc != GSASL_OK || prepared.p == nullptr || prepared.p[0] == '\0') {
    return invalid_argument("the password is not valid UTF-8 or holds characters SASLprep (RFC 4013) forbids");
  }
  return crypto::pbkdf2_hmac_sha256(prepared.p, salt, iterations);
}

ScramVerifier scram_verifier_from_salted(const crypto::Digest& salted_password, std::vector<std::byte> salt,
                                         std::uint32_t iterations) {
  ScramVerifier v;
  v.salt = std::move(salt);
  v.iterations = iterations;
  crypto::Digest client_key = crypto::hmac_sha256(salted_password, crypto::as_bytes("Client Key"));
  v.stored_key = crypto::sha256(client_key);
  v.server_key = crypto::hmac_sha256(salted_password, crypto::as_bytes("Server Key"));
  crypto::wipe(std::as_writable_bytes(std::span(client_key)));
  return v;
}

StatusOr<ScramVerifier> make_scram_verifier(std::string_view password, std::uint32_t iterations) {
  std::vector<std::byte> salt(kScramSaltBytes);
  TESTUDO_RETURN_IF_ERROR(crypto::fill_random(salt));
  TESTUDO_ASSIGN_OR_RETURN(crypto::Digest salted, scram_salted_password(password, salt, iterations));
  ScramVerifier v = scram_verifier_from_salted(salted, std::move(salt), iterations);
  crypto::wipe(std::as_writable_bytes(std::span(salted)));
  return v;
}

StatusOr<UserFile> UserFile::create() {
  UserFile file;
  TESTUDO_ASSIGN_OR_RETURN(file.decoy_key_, crypto::random_secret());
  return file;
}

StatusOr<UserFile> UserFile::parse(std::string_view text) {
  if (text.size() > kMaxUserFileBytes) {
    return resource_exhausted("user file is " + std::to_string(text.size()) + " bytes, over the limit of " +
                              std::to_string(kMaxUserFileBytes));
  }
  TESTUDO_ASSIGN_OR_RETURN(json root, parse_strict_json(text));
  if (!root.is_object()) return invalid_argument(std::string("must be a JSON object, not ") + root.type_name());
  // The version first: a newer file may hold keys this code does not know (docs/formats.md).
  auto version = root.find("version");
  if (version == root.end()) return invalid_argument("version: missing (expected 1)");
  if (version->is_number_unsigned() && version->get<std::uint64_t>() > kUserFileFormatVersion) {
    return error_at("version", "format version " + version->dump() +
                                   " was written for a newer testudo; this one reads version " +
                                   std::to_string(kUserFileFormatVersion));
  }
  if (!version->is_number_integer() || version->get<std::int64_t>() != kUserFileFormatVersion) {
    return error_at("version", "unsupported version " + version->dump() + " (expected 1)");
  }
  TESTUDO_RETURN_IF_ERROR(check_keys("top level", root, {"version", "decoy_key", "users"}));

  UserFile file;
  auto decoy = root.find("decoy_key");
  if (decoy == root.end()) return invalid_argument("decoy_key: missing (32 random bytes, base64)");
  TESTUDO_ASSIGN_OR_RETURN(file.decoy_key_, digest_at("decoy_key", *decoy));

  auto users = root.find("users");
  if (users == root.end()) return invalid_argument("users: missing (an object of user name -> entry)");
  if (!users->is_object()) return error_at("users", std::string("must be an object, not ") + users->type_name());
  for (auto u = users->begin(); u != users->end(); ++u) {
    if (Status st = check_user_name(u.key()); !st.ok()) return error_at("users", st.message());
    const std::string path = "users." + u.key();
    const json& ju = *u;
    if (!ju.is_object()) return error_at(path, std::string("must be an object, not ") + ju.type_name());
    TESTUDO_RETURN_IF_ERROR(
        check_keys(path, ju, {"salt", "iterations", "stored_key", "server_key", "groups", "disabled"}));
    for (const char* required : {"salt", "iterations", "stored_key", "server_key"}) {
      if (!ju.contains(required)) return error_at(path, std::string("missing \"") + required + "\"");
    }
    UserEntry entry;
    TESTUDO_ASSIGN_OR_RETURN(entry.verifier.salt, base64_at(path + ".salt", ju["salt"], 8, 64));
    const json& ji = ju["iterations"];
    if (!ji.is_number_unsigned() || ji.get<std::uint64_t>() < kMinScramIterations ||
        ji.get<std::uint64_t>() > kMaxScramIterations) {
      return error_at(path + ".iterations", "must be an integer in " + std::to_string(kMinScramIterations) + ".." +
                                                std::to_string(kMaxScramIterations) + ", not " + ji.dump());
    }
    entry.verifier.iterations = static_cast<std::uint32_t>(ji.get<std::uint64_t>());
    TESTUDO_ASSIGN_OR_RETURN(entry.verifier.stored_key, digest_at(path + ".stored_key", ju["stored_key"]));
    TESTUDO_ASSIGN_OR_RETURN(entry.verifier.server_key, digest_at(path + ".server_key", ju["server_key"]));
    if (auto jg = ju.find("groups"); jg != ju.end()) {
      if (!jg->is_array()) return error_at(path + ".groups", std::string("must be an array, not ") + jg->type_name());
      for (std::size_t i = 0; i < jg->size(); ++i) {
        const std::string gpath = path + ".groups[" + std::to_string(i) + "]";
        const json& g = (*jg)[i];
        if (!g.is_string()) return error_at(gpath, std::string("must be a string, not ") + g.type_name());
        if (Status st = check_group_name(g.get_ref<const std::string&>()); !st.ok()) {
          return error_at(gpath, st.message());
        }
        entry.groups.push_back(g.get<std::string>());
      }
      std::sort(entry.groups.begin(), entry.groups.end());
      entry.groups.erase(std::unique(entry.groups.begin(), entry.groups.end()), entry.groups.end());
    }
    if (auto jd = ju.find("disabled"); jd != ju.end()) {
      if (!jd->is_boolean()) {
        return error_at(path + ".disabled", std::string("must be true or false, not ") + jd->dump());
      }
      entry.disabled = jd->get<bool>();
    }
    file.users_.emplace(u.key(), std::move(entry));
  }
  file.update_decoy_iterations();
  return file;
}

StatusOr<UserFile> UserFile::load(const std::string& path) {
  auto text = crypto::read_private_file(path, "user file", kMaxUserFileBytes);
  if (!text.ok()) return text.status();
  auto file = parse(*text);
  if (!file.ok()) return Status(file.status().code(), "user file " + path + ": " + file.status().message());
  return file;
}

std::string UserFile::serialize() const {
  // Ordered: the version first, as a reader looks for it.
  using ordered = nlohmann::ordered_json;
  ordered users = ordered::object();
  for (const auto& [name, entry] : users_) {
    ordered j = {{"salt", crypto::to_base64(entry.verifier.salt)},
              {"iterations", entry.verifier.iterations},
              {"stored_key", crypto::to_base64(entry.verifier.stored_key)},
              {"server_key", crypto::to_base64(entry.verifier.server_key)},
              {"groups", entry.groups}};
    if (entry.disabled) j["disabled"] = true;
    users[name] = std::move(j);
  }
  ordered root = {{"version", kUserFileFormatVersion}, {"decoy_key", crypto::to_base64(decoy_key_)}, {"users", users}};
  return root.dump(2) + "\n";
}

Status UserFile::save(const std::string& path) const { return crypto::write_private_file(path, serialize()); }

const UserEntry* UserFile::find(std::string_view name) const {
  auto it = users_.find(name);
  return it == users_.end() ? nullptr : &it->second;
}

Status UserFile::set(const std::string& name, UserEntry entry) {
  TESTUDO_RETURN_IF_ERROR(check_user_name(name));
  for (const auto& g : entry.groups) TESTUDO_RETURN_IF_ERROR(check_group_name(g));
  if (entry.verifier.iterations < kMinScramIterations || entry.verifier.iterations > kMaxScramIterations) {
    return invalid_argument("iteration count " + std::to_string(entry.verifier.iterations) + " is outside " +
                            std::to_string(kMinScramIterations) + ".." + std::to_string(kMaxScramIterations));
  }
  std::sort(entry.groups.begin(), entry.groups.end());
  entry.groups.erase(std::unique(entry.groups.begin(), entry.groups.end()), entry.groups.end());
  users_[name] = std::move(entry);
  update_decoy_iterations();
  return ok_status();
}

bool UserFile::remove(std::string_view name) {
  auto it = users_.find(name);
  if (it == users_.end()) return false;
  users_.erase(it);
  update_decoy_iterations();
  return true;
}

void UserFile::update_decoy_iterations() {
  // The iteration count an unknown name shows is the one most users have (ties: the larger),
  // so it does not stand out; the default when the file has no users. Kept up to date here,
  // not counted per login, so an unknown name costs no more time than a known one.
  std::map<std::uint32_t, std::size_t> counts;
  for (const auto& [n, entry] : users_) ++counts[entry.verifier.iterations];
  decoy_iterations_ = kDefaultScramIterations;
  std::size_t best = 0;
  for (const auto& [i, count] : counts) {
    if (count >= best) {
      best = count;
      decoy_iterations_ = i;
    }
  }
}

ScramVerifier UserFile::decoy_verifier(std::string_view name) const {
  ScramVerifier v;
  const crypto::Digest salt = derive(decoy_key_, "salt", name);
  v.salt.assign(salt.begin(), salt.begin() + kScramSaltBytes);
  v.iterations = decoy_iterations_;
  v.stored_key = derive(decoy_key_, "stored_key", name);
  v.server_key = derive(decoy_key_, "server_key", name);
  return v;
}

StatusOr<std::shared_ptr<UserStore>> UserStore::open(std::string path) {
  std::shared_ptr<UserStore> store(new UserStore(std::move(path)));
  auto file = store->current();
  if (!file.ok()) return file.status();
  return store;
}

StatusOr<UserStore::Stamp> UserStore::stamp() const {
  struct stat st {};
  if (::stat(path_.c_str(), &st) != 0) {
    const int err = errno;
    if (err == ENOENT) return not_found("user file " + path_ + ": not found");
    return permission_denied("user file " + path_ + ": cannot stat: " + std::strerror(err));
  }
  Stamp s;
  s.device = st.st_dev;
  s.inode = st.st_ino;
  s.size = static_cast<std::uint64_t>(st.st_size);
  s.mtime_ns = static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
  // The change time too: a chmod that loosens the mode must be noticed (and refused).
  s.ctime_ns = static_cast<std::int64_t>(st.st_ctim.tv_sec) * 1'000'000'000 + st.st_ctim.tv_nsec;
  return s;
}

StatusOr<std::shared_ptr<const UserFile>> UserStore::current() {
  std::lock_guard lock(mu_);
  auto now = stamp();
  if (!now.ok()) {
    if (file_.ok()) LOG_WARN("auth") << now.status().message() << "; password logins fail until it is back";
    file_ = now.status();
    stamp_ = Stamp{};
    return file_;
  }
  if (*now == stamp_) return file_;
  stamp_ = *now;
  auto loaded = UserFile::load(path_);
  if (!loaded.ok()) {
    LOG_WARN("auth") << loaded.status().message() << "; password logins fail until it is fixed";
    file_ = loaded.status();
  } else {
    if (loaded_before_) {
      LOG_INFO("auth") << "user file " << path_ << " reloaded: " << loaded->users().size() << " users";
    }
    loaded_before_ = true;
    file_ = std::shared_ptr<const UserFile>(std::make_shared<UserFile>(std::move(loaded).value()));
  }
  return file_;
}

}  // namespace testudo::auth
