#include "auth/trust_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <tuple>
#include <utility>

#include "base/log.h"
#include "crypto/private_file.h"

namespace testudo::auth {
namespace {

using nlohmann::json;

constexpr std::string_view kSha256Prefix = "sha256:";
constexpr std::size_t kHexLen = 64;
constexpr std::size_t kMinPrefix = 8;
constexpr std::size_t kMaxNameBytes = 256;
constexpr std::size_t kMaxFileBytes = 64 * 1024;  // a certificate chain is a few KiB
constexpr std::size_t kMaxCandidatesShown = 10;
// A pending identity seen again has its JSON record rewritten at most this often (seconds).
constexpr std::int64_t kPendingWriteInterval = 60;
constexpr const char* kRoles[] = {"client", "engine"};

bool valid_role(std::string_view role) { return role == "client" || role == "engine"; }

bool is_hex(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
  });
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

// "sha256:<64 hex>" or "<64 hex>" (any case) -> the 64 lowercase hex digits.
std::optional<std::string> hex_of_fingerprint(std::string_view fp) {
  if (fp.starts_with(kSha256Prefix)) fp.remove_prefix(kSha256Prefix.size());
  if (fp.size() != kHexLen) return std::nullopt;
  std::string hex = lower(fp);
  if (!is_hex(hex)) return std::nullopt;
  return hex;
}

std::string fingerprint_of_hex(std::string_view hex) {
  return std::string(kSha256Prefix) + std::string(hex);
}

// Untrusted text (a peer's CN or address, an admin's label) made safe to store and print:
// control characters become '?', and it is cut at kMaxNameBytes.
std::string sanitize(std::string_view s) {
  std::string out(s.substr(0, kMaxNameBytes));
  for (char& c : out) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) c = '?';
  }
  return out;
}

// The first PEM block of `text`: from a line starting "-----BEGIN " to the end of the next
// line starting "-----END ", newline included. Text around it (comments) is not part of it.
std::optional<std::string> first_pem_block(std::string_view text) {
  std::size_t begin = std::string_view::npos;
  for (std::size_t pos = 0; pos < text.size();) {
    if (text.substr(pos).starts_with("-----BEGIN ")) {
      begin = pos;
      break;
    }
    const std::size_t nl = text.find('\n', pos);
    if (nl == std::string_view::npos) break;
    pos = nl + 1;
  }
  if (begin == std::string_view::npos) return std::nullopt;
  for (std::size_t pos = begin; pos < text.size();) {
    const std::size_t nl = text.find('\n', pos);
    const std::size_t line_end = nl == std::string_view::npos ? text.size() : nl;
    if (text.substr(pos, line_end - pos).starts_with("-----END ")) {
      std::string block(text.substr(begin, line_end - begin));
      while (!block.empty() && block.back() == '\r') block.pop_back();
      return block + "\n";
    }
    if (nl == std::string_view::npos) break;
    pos = nl + 1;
  }
  return std::nullopt;
}

// The "# name: ..." comment the store writes above the PEM block of the files it creates.
std::string name_comment(std::string_view text) {
  constexpr std::string_view kTag = "# name: ";
  for (std::size_t pos = 0; pos < text.size();) {
    const std::size_t nl = text.find('\n', pos);
    const std::string_view line =
        text.substr(pos, (nl == std::string_view::npos ? text.size() : nl) - pos);
    if (line.starts_with("-----BEGIN ")) break;
    if (line.starts_with(kTag)) return sanitize(line.substr(kTag.size()));
    if (nl == std::string_view::npos) break;
    pos = nl + 1;
  }
  return "";
}

std::string file_text(std::string_view role, std::string_view name, const std::string& block) {
  std::string out = "# testudo trusted ";
  out += role.empty() ? std::string_view("(revoked)") : role;
  out += " identity\n";
  if (!name.empty()) out += "# name: " + sanitize(name) + "\n";
  return out + block;
}

std::string octal_mode(mode_t mode) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(mode & 07777));
  return buf;
}

// An attacker who can write the trust directory, or a file in it, can admit themselves.
// Owned by us (or root) and not writable by group/others; readable is fine (public keys).
Status check_not_writable_by_others(const std::string& path, const struct stat& st,
                                    std::string_view what) {
  if (st.st_uid != ::geteuid() && st.st_uid != 0) {
    return permission_denied("trust store " + std::string(what) + " " + path + " is owned by uid " +
                             std::to_string(st.st_uid) + ", not by the current user (uid " +
                             std::to_string(::geteuid()) +
                             "); another user could admit any key; fix its owner");
  }
  if ((st.st_mode & 022) != 0) {
    return permission_denied("trust store " + std::string(what) + " " + path + " has mode " +
                             octal_mode(st.st_mode) +
                             ", writable by group/others, who could admit any key; run: chmod go-w " +
                             path);
  }
  return ok_status();
}

// Reads one file of the store. Sets *fatal for an unsafe owner or mode (the whole load must
// fail); other errors (a symlink, too big, unreadable) only skip this file.
StatusOr<std::string> read_store_file(const std::string& path, bool* fatal) {
  *fatal = false;
  const int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    const int err = errno;
    if (err == ELOOP) return invalid_argument(path + " is a symbolic link; not followed (copy the file instead)");
    return invalid_argument("cannot open " + path + ": " + std::strerror(err));
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) return invalid_argument("cannot stat " + path + ": " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) return invalid_argument(path + " is not a regular file");
  if (Status s = check_not_writable_by_others(path, st, "file"); !s.ok()) {
    *fatal = true;
    return s;
  }
  if (st.st_size < 0 || static_cast<std::size_t>(st.st_size) > kMaxFileBytes) {
    return invalid_argument(path + " is larger than " + std::to_string(kMaxFileBytes) + " bytes");
  }
  std::string out(kMaxFileBytes + 1, '\0');
  std::size_t have = 0;
  while (have < out.size()) {
    const ssize_t n = ::read(fd, out.data() + have, out.size() - have);
    if (n < 0) {
      if (errno == EINTR) continue;
      return invalid_argument("cannot read " + path + ": " + std::strerror(errno));
    }
    if (n == 0) break;
    have += static_cast<std::size_t>(n);
  }
  if (have > kMaxFileBytes) return invalid_argument(path + " grew past " + std::to_string(kMaxFileBytes) + " bytes");
  out.resize(have);
  return out;
}

// File names in a directory, sorted (so warnings and "first file" are deterministic).
StatusOr<std::vector<std::string>> list_dir(const std::string& dir) {
  std::error_code ec;
  std::filesystem::directory_iterator it(dir, ec);
  if (ec) return unavailable("cannot list " + dir + ": " + ec.message());
  std::vector<std::string> names;
  for (; it != std::filesystem::directory_iterator(); it.increment(ec)) {
    if (ec) return unavailable("cannot list " + dir + ": " + ec.message());
    names.push_back(it->path().filename().string());
  }
  if (ec) return unavailable("cannot list " + dir + ": " + ec.message());
  std::sort(names.begin(), names.end());
  return names;
}

Status remove_file(const std::string& path) {
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return unavailable("cannot remove " + path + ": " + std::strerror(errno));
  }
  return ok_status();
}

std::string describe(const TrustEntry& e) {
  std::string out = e.fingerprint + " (" + std::string(trust_state_name(e.state));
  if (!e.role.empty()) out += " " + e.role;
  if (!e.name.empty()) out += ", " + e.name;
  return out + ")";
}

}  // namespace

std::string_view trust_state_name(TrustState state) {
  switch (state) {
    case TrustState::kUnknown:
      return "unknown";
    case TrustState::kPending:
      return "pending";
    case TrustState::kAccepted:
      return "accepted";
    case TrustState::kRevoked:
      return "revoked";
  }
  return "unknown";
}

TrustStore::TrustStore(std::string dir, FingerprintFn fingerprint_of, TrustStoreOptions options)
    : dir_(std::move(dir)), fingerprint_of_(std::move(fingerprint_of)), options_(options) {}

StatusOr<std::unique_ptr<TrustStore>> TrustStore::open(const std::string& dir,
                                                       FingerprintFn fingerprint_of,
                                                       TrustStoreOptions options) {
  if (dir.empty()) return invalid_argument("trust store directory is empty");
  if (!fingerprint_of) return invalid_argument("trust store needs a fingerprint function");
  std::string clean = dir;
  while (clean.size() > 1 && clean.back() == '/') clean.pop_back();
  std::unique_ptr<TrustStore> store(new TrustStore(clean, std::move(fingerprint_of), options));
  TESTUDO_RETURN_IF_ERROR(store->check_dirs(/*create=*/true));
  TESTUDO_RETURN_IF_ERROR(store->check_format());
  TESTUDO_RETURN_IF_ERROR(store->reload());
  return store;
}

Status TrustStore::check_format() const {
  const std::string file = path("format.json", "");
  struct stat st {};
  if (::lstat(file.c_str(), &st) != 0) {
    if (errno != ENOENT) return unavailable("cannot stat " + file + ": " + std::strerror(errno));
    // Written before stores carried a version, or new: either way the layout is version 1.
    // Saying so now lets a later version tell this layout from its own. A directory the
    // controller may not write (root's, managed by hand) is still read: only a warning.
    Status written = crypto::write_private_file(
        file, nlohmann::json{{"version", kTrustStoreFormatVersion}}.dump() + "\n");
    if (!written.ok()) LOG_WARN("auth") << "trust store: read as format version 1; " << written.message();
    return ok_status();
  }
  // Read as every file here: readable by others is fine, writable by them is not.
  bool fatal = false;
  auto text = read_store_file(file, &fatal);
  if (!text.ok()) return fatal ? text.status() : data_loss("trust store format file: " + text.status().message());
  const nlohmann::json j = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  const auto version = j.is_object() ? j.find("version") : j.end();
  if (!j.is_object() || version == j.end() || !version->is_number_unsigned()) {
    return data_loss("trust store format file " + file + ": not {\"version\": <n>}");
  }
  if (version->get<std::uint64_t>() > static_cast<std::uint64_t>(kTrustStoreFormatVersion)) {
    return failed_precondition("trust store " + dir_ + ": format version " + version->dump() +
                               " was written by a newer testudo; this one reads version " +
                               std::to_string(kTrustStoreFormatVersion) + " (use the newer testudo)");
  }
  if (version->get<std::uint64_t>() < 1) {
    return data_loss("trust store format file " + file + ": version " + version->dump() + " is not a testudo version");
  }
  return ok_status();
}

std::string TrustStore::path(std::string_view sub, std::string_view file) const {
  std::string out = dir_;
  out += '/';
  out += sub;
  if (!file.empty()) {
    out += '/';
    out += file;
  }
  return out;
}

Status TrustStore::check_dirs(bool create) const {
  for (const char* sub : {"", "client", "engine", "pending", "revoked"}) {
    const std::string p = *sub ? path(sub, "") : dir_;
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0) {
      if (errno != ENOENT || !create) {
        return unavailable("cannot use trust store directory " + p + ": " + std::strerror(errno));
      }
      TESTUDO_RETURN_IF_ERROR(crypto::ensure_private_dir(p));  // mode 0700
      if (::stat(p.c_str(), &st) != 0) {
        return unavailable("cannot stat " + p + ": " + std::strerror(errno));
      }
    }
    if (!S_ISDIR(st.st_mode)) return failed_precondition(p + " exists and is not a directory");
    TESTUDO_RETURN_IF_ERROR(check_not_writable_by_others(p, st, "directory"));
  }
  return ok_status();
}

StatusOr<std::string> TrustStore::fingerprint_of_block(std::string_view pem_block) const {
  TESTUDO_ASSIGN_OR_RETURN(std::string fp, fingerprint_of_(pem_block));
  auto hex = hex_of_fingerprint(fp);
  if (!fp.starts_with(kSha256Prefix) || !hex) {
    return internal_error("fingerprint function returned a value that is not sha256:<64 hex>");
  }
  return *hex;
}

StatusOr<TrustStore::KeyMap> TrustStore::scan(std::vector<std::string>& warnings) const {
  KeyMap keys;
  // Reads and fingerprints one .pem file. nullopt (with a warning) when it is to be skipped.
  struct Pem {
    std::string hex, block, name;
  };
  auto load_pem = [&](const std::string& file) -> StatusOr<std::optional<Pem>> {
    bool fatal = false;
    auto text = read_store_file(file, &fatal);
    if (!text.ok()) {
      if (fatal) return text.status();
      warnings.push_back(text.status().message() + "; skipped");
      return std::optional<Pem>();
    }
    auto block = first_pem_block(*text);
    if (!block) {
      warnings.push_back(file + " holds no PEM block; skipped");
      return std::optional<Pem>();
    }
    auto hex = fingerprint_of_block(*block);
    if (!hex.ok()) {
      warnings.push_back(file + " is not a usable certificate or public key (" +
                         hex.status().message() + "); skipped");
      return std::optional<Pem>();
    }
    return std::optional<Pem>(Pem{*hex, std::move(*block), name_comment(*text)});
  };

  // client/ and engine/: any *.pem file name.
  for (const char* role : kRoles) {
    TESTUDO_ASSIGN_OR_RETURN(auto names, list_dir(path(role, "")));
    for (const std::string& fname : names) {
      if (fname.starts_with(".")) continue;  // temporary files of an interrupted write
      const std::string file = path(role, fname);
      if (!fname.ends_with(".pem")) {
        warnings.push_back(file + " does not end in .pem; ignored");
        continue;
      }
      TESTUDO_ASSIGN_OR_RETURN(auto pem, load_pem(file));
      if (!pem) continue;
      KeyRecord& rec = keys[pem->hex];
      if (rec.pem.empty()) rec.pem = pem->block;
      rec.accepted_files[role].push_back(file);
      if (rec.accepted.count(role) == 0) {
        TrustEntry e;
        e.role = role;
        e.fingerprint = fingerprint_of_hex(pem->hex);
        e.name = !pem->name.empty() ? pem->name : sanitize(fname.substr(0, fname.size() - 4));
        e.state = TrustState::kAccepted;
        e.file = file;
        rec.accepted.emplace(role, std::move(e));
      }
    }
  }

  // revoked/: fail safe. A file named <64hex>.pem revokes that key even if its content is
  // damaged; its content's key is revoked too.
  {
    TESTUDO_ASSIGN_OR_RETURN(auto names, list_dir(path("revoked", "")));
    for (const std::string& fname : names) {
      if (fname.starts_with(".")) continue;
      const std::string file = path("revoked", fname);
      if (!fname.ends_with(".pem")) {
        warnings.push_back(file + " does not end in .pem; ignored");
        continue;
      }
      std::optional<std::string> named_hex;
      const std::string stem = fname.substr(0, fname.size() - 4);
      if (stem.size() == kHexLen && is_hex(stem)) named_hex = stem;
      TESTUDO_ASSIGN_OR_RETURN(auto pem, load_pem(file));
      auto revoke_hex = [&](const std::string& hex, const std::string& block, const std::string& name) {
        KeyRecord& rec = keys[hex];
        if (rec.pem.empty()) rec.pem = block;
        if (rec.revoked) return;
        rec.revoked = std::make_unique<TrustEntry>();
        rec.revoked->fingerprint = fingerprint_of_hex(hex);
        rec.revoked->name = name;
        rec.revoked->state = TrustState::kRevoked;
        rec.revoked->file = file;
      };
      if (pem) revoke_hex(pem->hex, pem->block, pem->name);
      if (named_hex && (!pem || pem->hex != *named_hex)) {
        if (pem) warnings.push_back(file + " holds key sha256:" + pem->hex + ", not the one its name says; both are revoked");
        revoke_hex(*named_hex, "", "");
      }
    }
  }

  // pending/: <role>-<64hex>.pem with an optional <role>-<64hex>.json beside it.
  {
    TESTUDO_ASSIGN_OR_RETURN(auto names, list_dir(path("pending", "")));
    for (const std::string& fname : names) {
      if (fname.starts_with(".")) continue;
      const std::string file = path("pending", fname);
      const bool is_pem = fname.ends_with(".pem"), is_json = fname.ends_with(".json");
      const std::string stem = fname.substr(0, fname.size() - (is_pem ? 4 : is_json ? 5 : 0));
      const auto dash = stem.find('-');
      const std::string role = dash == std::string::npos ? "" : stem.substr(0, dash);
      const std::string hex = dash == std::string::npos ? "" : stem.substr(dash + 1);
      if ((!is_pem && !is_json) || !valid_role(role) || hex.size() != kHexLen || !is_hex(hex)) {
        warnings.push_back(file + " is not named <client|engine>-<64 hex>.pem or .json; ignored");
        continue;
      }
      if (is_json) {
        if (std::find(names.begin(), names.end(), stem + ".pem") == names.end()) {
          warnings.push_back(file + " has no " + stem + ".pem beside it; ignored");
        }
        continue;  // read with its .pem
      }
      TESTUDO_ASSIGN_OR_RETURN(auto pem, load_pem(file));
      if (!pem) continue;
      if (pem->hex != hex) {
        warnings.push_back(file + " holds key sha256:" + pem->hex + ", not the one its name says; skipped");
        continue;
      }
      TrustEntry e;
      e.role = role;
      e.fingerprint = fingerprint_of_hex(hex);
      e.state = TrustState::kPending;
      e.file = file;
      // The JSON record is metadata only: a missing or damaged one leaves defaults.
      const std::string json_file = path("pending", stem + ".json");
      if (std::find(names.begin(), names.end(), stem + ".json") != names.end()) {
        bool fatal = false;
        auto text = read_store_file(json_file, &fatal);
        if (!text.ok() && fatal) return text.status();
        json j = text.ok() ? json::parse(*text, nullptr, /*allow_exceptions=*/false) : json();
        if (!text.ok()) {
          warnings.push_back(text.status().message() + "; its metadata is ignored");
        } else if (j.is_discarded() || !j.is_object()) {
          warnings.push_back(json_file + " is not a JSON object; its metadata is ignored");
        } else {
          auto str = [&j](const char* key) -> std::string {
            auto it = j.find(key);
            return it != j.end() && it->is_string() ? sanitize(it->get<std::string>()) : "";
          };
          auto num = [&j](const char* key) -> std::int64_t {
            auto it = j.find(key);
            return it != j.end() && it->is_number_integer() ? it->get<std::int64_t>() : 0;
          };
          e.name = str("name");
          e.peer = str("peer");
          e.first_seen = num("first_seen");
          e.last_seen = num("last_seen");
          e.attempts = num("attempts");
        }
      }
      KeyRecord& rec = keys[hex];
      if (rec.pem.empty()) rec.pem = pem->block;
      rec.pending_written[role] = e.last_seen;
      rec.pending.emplace(role, std::move(e));
    }
  }

  // A key accepted (in that role) or revoked is no longer pending.
  for (auto& [hex, rec] : keys) {
    for (auto it = rec.pending.begin(); it != rec.pending.end();) {
      if (rec.revoked || rec.accepted.count(it->first)) {
        it = rec.pending.erase(it);
      } else {
        ++it;
      }
    }
    if (rec.revoked) {
      for (const auto& [role, files] : rec.accepted_files) {
        for (const auto& f : files) {
          warnings.push_back(f + " holds revoked key sha256:" + hex + "; it is refused");
        }
      }
    }
  }
  return keys;
}

Status TrustStore::reload() {
  TESTUDO_RETURN_IF_ERROR(check_dirs(/*create=*/false));
  std::vector<std::string> warnings;
  TESTUDO_ASSIGN_OR_RETURN(KeyMap keys, scan(warnings));
  keys_ = std::move(keys);
  warnings_ = std::move(warnings);
  pending_count_ = 0;
  for (const auto& [hex, rec] : keys_) pending_count_ += rec.pending.size();
  for (const auto& w : warnings_) LOG_WARN("auth") << "trust store: " << w;
  return ok_status();
}

TrustState TrustStore::state(std::string_view role, std::string_view fingerprint) const {
  if (fingerprint.starts_with(kSha256Prefix)) fingerprint.remove_prefix(kSha256Prefix.size());
  if (fingerprint.size() != kHexLen) return TrustState::kUnknown;
  auto it = keys_.find(fingerprint);
  if (it == keys_.end()) {
    // Rare: upper-case input. Keys are stored in lower case.
    const std::string low = lower(fingerprint);
    if (low == fingerprint) return TrustState::kUnknown;
    it = keys_.find(low);
    if (it == keys_.end()) return TrustState::kUnknown;
  }
  const KeyRecord& rec = it->second;
  if (rec.revoked) return TrustState::kRevoked;
  if (rec.accepted.find(role) != rec.accepted.end()) return TrustState::kAccepted;
  if (rec.pending.find(role) != rec.pending.end()) return TrustState::kPending;
  return TrustState::kUnknown;
}

Status TrustStore::write_pending_json(const TrustEntry& e) const {
  const json j = {
      {"role", e.role},           {"fingerprint", e.fingerprint}, {"name", e.name},
      {"peer", e.peer},           {"first_seen", e.first_seen},   {"last_seen", e.last_seen},
      {"attempts", e.attempts},
  };
  const std::string hex = e.fingerprint.substr(kSha256Prefix.size());
  return crypto::write_private_file(path("pending", e.role + "-" + hex + ".json"),
                                    j.dump(2, ' ', false, json::error_handler_t::replace) + "\n");
}

void TrustStore::remove_pending_files(std::string_view role, const std::string& hex) const {
  const std::string stem = std::string(role) + "-" + hex;
  for (const char* ext : {".json", ".pem"}) {
    if (Status s = remove_file(path("pending", stem + ext)); !s.ok()) {
      LOG_WARN("auth") << "trust store: " << s.message();
    }
  }
}

Status TrustStore::add_pending(std::string_view role, std::string_view fingerprint,
                               std::string_view cert_pem, std::string_view name,
                               std::string_view peer, std::int64_t now_unix) {
  if (!valid_role(role)) return invalid_argument("role must be \"client\" or \"engine\"");
  auto hex = hex_of_fingerprint(fingerprint);
  if (!hex) return invalid_argument("fingerprint must be sha256:<64 hex digits>");
  auto block = first_pem_block(cert_pem);
  if (!block) return invalid_argument("the peer's certificate is not PEM text");
  TESTUDO_ASSIGN_OR_RETURN(std::string actual, fingerprint_of_block(*block));
  if (actual != *hex) {
    return invalid_argument("the certificate's key is sha256:" + actual + ", not " +
                            fingerprint_of_hex(*hex));
  }

  auto it = keys_.find(*hex);
  if (it != keys_.end()) {
    KeyRecord& rec = it->second;
    if (rec.revoked) return permission_denied("identity " + fingerprint_of_hex(*hex) + " is revoked");
    if (rec.accepted.count(role)) return ok_status();
    if (auto p = rec.pending.find(role); p != rec.pending.end()) {
      TrustEntry updated = p->second;
      updated.name = sanitize(name);
      updated.peer = sanitize(peer);
      updated.last_seen = now_unix;
      ++updated.attempts;
      std::int64_t& written = rec.pending_written[std::string(role)];
      if (now_unix < written || now_unix - written >= kPendingWriteInterval) {
        TESTUDO_RETURN_IF_ERROR(write_pending_json(updated));
        written = now_unix;
      }
      p->second = std::move(updated);
      return ok_status();
    }
  }
  if (pending_count_ >= options_.max_pending) {
    return resource_exhausted("the trust store already holds " + std::to_string(pending_count_) +
                              " pending identities (the limit); accept or reject some first");
  }

  TrustEntry e;
  e.role = std::string(role);
  e.fingerprint = fingerprint_of_hex(*hex);
  e.name = sanitize(name);
  e.state = TrustState::kPending;
  e.file = path("pending", e.role + "-" + *hex + ".pem");
  e.peer = sanitize(peer);
  e.first_seen = e.last_seen = now_unix;
  e.attempts = 1;
  // The PEM first: a record without its JSON still loads, one without its PEM does not.
  TESTUDO_RETURN_IF_ERROR(crypto::write_private_file(e.file, *block));
  TESTUDO_RETURN_IF_ERROR(write_pending_json(e));
  KeyRecord& rec = keys_[*hex];
  if (rec.pem.empty()) rec.pem = *block;
  rec.pending_written[e.role] = now_unix;
  rec.pending.emplace(e.role, std::move(e));
  ++pending_count_;
  return ok_status();
}

StatusOr<TrustStore::Match> TrustStore::resolve(std::string_view who) const {
  const std::string shown = sanitize(who);
  Match m;
  std::string_view rest = who;
  for (const char* role : kRoles) {
    const std::string tag = std::string(role) + ":";
    if (rest.starts_with(tag)) {
      m.role = role;
      rest.remove_prefix(tag.size());
      break;
    }
  }
  if (rest.starts_with(kSha256Prefix)) rest.remove_prefix(kSha256Prefix.size());
  const std::string prefix = lower(rest);
  if (!is_hex(prefix) || prefix.size() > kHexLen) {
    return invalid_argument("'" + shown + "' is not a fingerprint: expected [client:|engine:][sha256:]<hex digits>");
  }
  if (prefix.size() < kMinPrefix) {
    return invalid_argument("'" + shown + "' is too short: give at least " +
                            std::to_string(kMinPrefix) + " hex digits of the fingerprint");
  }
  auto in_role = [&m](const KeyRecord& rec) {
    return m.role.empty() || rec.revoked || rec.accepted.count(m.role) || rec.pending.count(m.role);
  };
  std::vector<std::string> found;
  for (const auto& [hex, rec] : keys_) {
    if (hex.starts_with(prefix) && !rec.empty() && in_role(rec)) found.push_back(hex);
  }
  std::sort(found.begin(), found.end());
  if (found.size() == 1) {
    m.hex = found.front();
    return m;
  }
  if (found.empty()) {
    std::string msg = "no identity matches '" + shown + "'";
    std::vector<TrustEntry> pending;
    for (const auto& e : list()) {
      if (e.state == TrustState::kPending) pending.push_back(e);
    }
    if (!pending.empty()) {
      msg += "; pending:";
      for (std::size_t i = 0; i < pending.size() && i < kMaxCandidatesShown; ++i) {
        msg += "\n  " + describe(pending[i]);
      }
      if (pending.size() > kMaxCandidatesShown) {
        msg += "\n  ... and " + std::to_string(pending.size() - kMaxCandidatesShown) + " more";
      }
    }
    return not_found(std::move(msg));
  }
  std::string msg = "'" + shown + "' is ambiguous; it matches " + std::to_string(found.size()) +
                    " identities; give more digits:";
  for (std::size_t i = 0; i < found.size() && i < kMaxCandidatesShown; ++i) {
    msg += "\n  " + describe(entry_for(found[i], m.role));
  }
  if (found.size() > kMaxCandidatesShown) {
    msg += "\n  ... and " + std::to_string(found.size() - kMaxCandidatesShown) + " more";
  }
  return invalid_argument(std::move(msg));
}

// The entry show() gives: revoked, else accepted, else pending (in `role` if not empty).
TrustEntry TrustStore::entry_for(const std::string& hex, std::string_view role) const {
  auto it = keys_.find(hex);
  if (it == keys_.end()) return TrustEntry{};
  const KeyRecord& rec = it->second;
  if (rec.revoked) return *rec.revoked;
  for (const auto* m : {&rec.accepted, &rec.pending}) {
    if (role.empty() && !m->empty()) return m->begin()->second;
    if (auto e = m->find(role); e != m->end()) return e->second;
  }
  TrustEntry none;
  none.fingerprint = fingerprint_of_hex(hex);
  return none;
}

StatusOr<TrustEntry> TrustStore::show(std::string_view who) const {
  TESTUDO_ASSIGN_OR_RETURN(Match m, resolve(who));
  return entry_for(m.hex, m.role);
}

std::vector<TrustEntry> TrustStore::list() const {
  std::vector<TrustEntry> out;
  for (const auto& [hex, rec] : keys_) {
    if (rec.revoked) {
      out.push_back(*rec.revoked);
      continue;
    }
    for (const auto& [role, e] : rec.accepted) out.push_back(e);
    for (const auto& [role, e] : rec.pending) out.push_back(e);
  }
  std::sort(out.begin(), out.end(), [](const TrustEntry& a, const TrustEntry& b) {
    return std::tie(a.state, a.fingerprint, a.role) < std::tie(b.state, b.fingerprint, b.role);
  });
  return out;
}

StatusOr<std::string> TrustStore::pending_role(const Match& m, const KeyRecord& rec) const {
  if (!m.role.empty()) return m.role;
  if (rec.pending.size() > 1) {
    return invalid_argument("identity " + fingerprint_of_hex(m.hex) +
                            " is pending both as a client and as an engine; say client:" + m.hex.substr(0, 12) +
                            " or engine:" + m.hex.substr(0, 12));
  }
  return rec.pending.size() == 1 ? rec.pending.begin()->first : std::string();
}

StatusOr<TrustEntry> TrustStore::accept(std::string_view who) {
  TESTUDO_ASSIGN_OR_RETURN(Match m, resolve(who));
  KeyRecord& rec = keys_.at(m.hex);
  const std::string fp = fingerprint_of_hex(m.hex);
  if (rec.revoked) {
    return failed_precondition("identity " + fp + " is revoked; to trust it again, remove " +
                               rec.revoked->file + " and reload");
  }
  if (m.role.empty() && rec.pending.empty() && !rec.accepted.empty()) {
    return rec.accepted.begin()->second;  // already accepted
  }
  TESTUDO_ASSIGN_OR_RETURN(std::string role, pending_role(m, rec));
  if (auto a = rec.accepted.find(role); a != rec.accepted.end()) return a->second;
  auto p = rec.pending.find(role);
  if (p == rec.pending.end()) return not_found("identity " + fp + " is not pending as " + role);

  TrustEntry e = p->second;
  e.state = TrustState::kAccepted;
  e.file = path(role, m.hex + ".pem");
  TESTUDO_RETURN_IF_ERROR(crypto::write_private_file(e.file, file_text(role, e.name, rec.pem)));
  remove_pending_files(role, m.hex);
  rec.pending.erase(p);
  --pending_count_;
  rec.accepted_files[role].push_back(e.file);
  rec.accepted[role] = e;
  return e;
}

StatusOr<TrustEntry> TrustStore::accept_pem(std::string_view role, std::string_view pem,
                                            std::string_view name) {
  if (!valid_role(role)) return invalid_argument("role must be \"client\" or \"engine\"");
  auto block = first_pem_block(pem);
  if (!block) return invalid_argument("no PEM block (-----BEGIN ... -----END ...) in the key text");
  auto hex = fingerprint_of_block(*block);
  if (!hex.ok()) return hex.status().with_context("not a usable certificate or public key");
  const std::string fp = fingerprint_of_hex(*hex);
  auto it = keys_.find(*hex);
  if (it != keys_.end()) {
    const KeyRecord& rec = it->second;
    if (rec.revoked) return failed_precondition("identity " + fp + " is revoked");
    if (auto a = rec.accepted.find(role); a != rec.accepted.end()) return a->second;
  }

  TrustEntry e;
  e.role = std::string(role);
  e.fingerprint = fp;
  e.name = sanitize(name);
  e.state = TrustState::kAccepted;
  e.file = path(role, *hex + ".pem");
  TESTUDO_RETURN_IF_ERROR(crypto::write_private_file(e.file, file_text(role, e.name, *block)));
  KeyRecord& rec = keys_[*hex];
  if (rec.pem.empty()) rec.pem = *block;
  if (rec.pending.erase(e.role) > 0) {
    remove_pending_files(role, *hex);
    --pending_count_;
  }
  rec.accepted_files[e.role].push_back(e.file);
  rec.accepted[e.role] = e;
  return e;
}

StatusOr<TrustEntry> TrustStore::reject(std::string_view who) {
  TESTUDO_ASSIGN_OR_RETURN(Match m, resolve(who));
  KeyRecord& rec = keys_.at(m.hex);
  const std::string fp = fingerprint_of_hex(m.hex);
  TESTUDO_ASSIGN_OR_RETURN(std::string role, pending_role(m, rec));
  auto p = rec.pending.find(role);
  if (p == rec.pending.end()) {
    return failed_precondition("identity " + fp + " is " +
                               std::string(trust_state_name(entry_for(m.hex, role).state)) +
                               ", not pending; to refuse an accepted identity, revoke it");
  }
  TrustEntry e = p->second;
  const std::string stem = role + "-" + m.hex;
  TESTUDO_RETURN_IF_ERROR(remove_file(path("pending", stem + ".pem")));
  TESTUDO_RETURN_IF_ERROR(remove_file(path("pending", stem + ".json")));
  rec.pending.erase(p);
  --pending_count_;
  if (rec.empty()) keys_.erase(m.hex);
  e.state = TrustState::kUnknown;
  return e;
}

StatusOr<TrustEntry> TrustStore::revoke_pem(std::string_view pem, std::string_view name) {
  auto block = first_pem_block(pem);
  if (!block) return invalid_argument("no PEM block (-----BEGIN ... -----END ...) in the key text");
  auto hex = fingerprint_of_block(*block);
  if (!hex.ok()) return hex.status().with_context("not a usable certificate or public key");
  auto known = keys_.find(*hex);
  if (known != keys_.end() && (known->second.revoked || !known->second.accepted.empty() || !known->second.pending.empty())) {
    return revoke(fingerprint_of_hex(*hex));
  }
  TrustEntry e;
  e.fingerprint = fingerprint_of_hex(*hex);
  e.name = sanitize(name);
  e.state = TrustState::kRevoked;
  e.file = path("revoked", *hex + ".pem");
  TESTUDO_RETURN_IF_ERROR(crypto::write_private_file(e.file, file_text("", e.name, *block)));
  KeyRecord& rec = keys_[*hex];
  rec.pem = *block;
  rec.revoked = std::make_unique<TrustEntry>(e);
  return e;
}

StatusOr<TrustEntry> TrustStore::revoke(std::string_view who) {
  TESTUDO_ASSIGN_OR_RETURN(Match m, resolve(who));
  KeyRecord& rec = keys_.at(m.hex);
  const TrustEntry before = entry_for(m.hex, m.role);
  if (!rec.revoked) {
    if (rec.pem.empty()) return internal_error("no PEM known for " + fingerprint_of_hex(m.hex));
    TrustEntry e;
    e.fingerprint = fingerprint_of_hex(m.hex);
    e.name = before.name;
    e.state = TrustState::kRevoked;
    e.file = path("revoked", m.hex + ".pem");
    // Revoked first: from here on the key is refused, whatever removing the rest does.
    TESTUDO_RETURN_IF_ERROR(crypto::write_private_file(e.file, file_text("", e.name, rec.pem)));
    rec.revoked = std::make_unique<TrustEntry>(std::move(e));
  }
  // Remove every accepted file holding the key, whatever its name, and its pending records.
  for (const auto& [role, files] : rec.accepted_files) {
    for (const auto& f : files) {
      if (Status s = remove_file(f); !s.ok()) {
        LOG_WARN("auth") << "trust store: revoked key still in a file (refused anyway): " << s.message();
      }
    }
  }
  rec.accepted_files.clear();
  rec.accepted.clear();
  for (const auto& [role, e] : rec.pending) remove_pending_files(role, m.hex);
  pending_count_ -= rec.pending.size();
  rec.pending.clear();
  return *rec.revoked;
}

}  // namespace testudo::auth
