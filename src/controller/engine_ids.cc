#include "controller/engine_ids.h"

#include <nlohmann/json.hpp>

#include "crypto/crypto.h"
#include "crypto/private_file.h"

namespace testudo::controller {
namespace {

// The file's format; a newer one is refused rather than misread.
constexpr int kFormatVersion = 1;
// kMaxRemembered entries of ~75 bytes, with room to spare.
constexpr std::size_t kMaxFileBytes = 16u << 20;

std::string key_of(std::string_view fingerprint, std::string_view instance) {
  std::string both;
  both.reserve(fingerprint.size() + 1 + instance.size());
  both.append(fingerprint).push_back('\0');
  both.append(instance);
  return crypto::to_hex(crypto::sha256(std::as_bytes(std::span(both.data(), both.size()))));
}

bool is_key(const std::string& s) {
  return s.size() == 64 && s.find_first_not_of("0123456789abcdef") == std::string::npos;
}

}  // namespace

StatusOr<std::unique_ptr<EngineIds>> EngineIds::open(std::string path, bool resume) {
  auto ids = std::make_unique<EngineIds>();
  ids->path_ = std::move(path);
  if (!resume) return ids;
  auto text = crypto::read_private_file(ids->path_, "engine id file", kMaxFileBytes);
  if (!text.ok()) {
    if (text.status().code() == StatusCode::kNotFound) return ids;
    return text.status();
  }
  const std::string bad = "engine id file " + ids->path_ + " is malformed; start without --reuse to replace it (";
  auto j = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return data_loss(bad + "not a JSON object)");
  auto version = j.find("version");
  if (version == j.end() || !version->is_number_unsigned()) return data_loss(bad + "no format version)");
  if (version->get<std::uint64_t>() > kFormatVersion) {
    return failed_precondition("engine id file " + ids->path_ + " has format version " +
                               std::to_string(version->get<std::uint64_t>()) + ", newer than this testudo reads (" +
                               std::to_string(kFormatVersion) + ")");
  }
  auto next = j.find("next_id");
  auto engines = j.find("engines");
  if (next == j.end() || !next->is_number_unsigned() || next->get<std::uint64_t>() > UINT32_MAX) {
    return data_loss(bad + "no next_id)");
  }
  if (engines == j.end() || !engines->is_object() || engines->size() > kMaxRemembered) {
    return data_loss(bad + "no engines object, or too many)");
  }
  ids->next_id_ = static_cast<std::uint32_t>(next->get<std::uint64_t>());
  for (const auto& [key, value] : engines->items()) {
    if (!is_key(key) || !value.is_number_unsigned() || value.get<std::uint64_t>() >= ids->next_id_) {
      return data_loss(bad + "a bad entry)");
    }
    const auto id = static_cast<std::uint32_t>(value.get<std::uint64_t>());
    if (!ids->by_id_.emplace(id, key).second) return data_loss(bad + "id " + std::to_string(id) + " twice)");
    ids->by_key_.emplace(key, id);
    ids->previous_run_.insert(id);
  }
  ids->resumed_ = true;
  return ids;
}

StatusOr<EngineIds::Assigned> EngineIds::assign(std::string_view fingerprint, std::string_view instance) {
  if (next_id_ == UINT32_MAX) return resource_exhausted("no engine ids left in this cluster's life");
  if (instance.empty()) {
    // Not remembered, but still counted: the id is never given again.
    const std::uint32_t id = next_id_++;
    if (Status st = save(); !st.ok()) {
      --next_id_;
      return st;
    }
    return Assigned{id, false};
  }
  std::string key = key_of(fingerprint, instance);
  if (auto known = by_key_.find(key); known != by_key_.end()) return Assigned{known->second, true};
  const std::uint32_t id = next_id_;
  // Kept as they were if the write fails.
  std::map<std::string, std::uint32_t> forgotten;
  while (by_key_.size() >= kMaxRemembered) {
    auto lowest = by_id_.begin();
    forgotten.emplace(lowest->second, lowest->first);
    by_key_.erase(lowest->second);
    by_id_.erase(lowest);
  }
  by_key_.emplace(key, id);
  by_id_.emplace(id, key);
  ++next_id_;
  if (Status st = save(); !st.ok()) {
    --next_id_;
    by_key_.erase(key);
    by_id_.erase(id);
    for (auto& [k, old] : forgotten) {
      by_key_.emplace(k, old);
      by_id_.emplace(old, k);
    }
    return st;
  }
  return Assigned{id, false};
}

Status EngineIds::save() const {
  if (path_.empty()) return ok_status();
  nlohmann::json engines = nlohmann::json::object();
  for (const auto& [key, id] : by_key_) engines[key] = id;
  const nlohmann::json j = {{"version", kFormatVersion}, {"next_id", next_id_}, {"engines", std::move(engines)}};
  return crypto::write_private_file(path_, j.dump() + "\n");
}

}  // namespace testudo::controller
