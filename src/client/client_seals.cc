#include "client/client_seals.h"

#include <sys/stat.h>

#include <ctime>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "auth/identity.h"
#include "base/profile.h"
#include "e2e/pair_offer.h"
#include "e2e/result_key.h"
#include "wire/body.h"
#include "wire/control.h"

namespace testudo::client {
namespace {

std::int64_t now_unix() { return static_cast<std::int64_t>(std::time(nullptr)); }

std::string engine_name(EngineId id) { return "engine " + std::to_string(id); }

}  // namespace

StatusOr<std::unique_ptr<ClientSeals>> ClientSeals::create(const ClientOptions& options,
                                                           const tls::KeyAndCertificate& identity) {
  std::vector<std::string> keys = options.engine_keys;
  if (keys.empty() && options.engine_cafile.empty()) {
    // The shared engine identity beside the connection file (by default this user's own
    // profile's): the engines `cluster start` launches present it, and it was made on this
    // machine, not handed over by a controller.
    const std::string security_dir = options.connection_file.empty()
                                         ? profile_paths(options.profile).security_dir
                                         : std::filesystem::path(options.connection_file).parent_path().string();
    const std::string cert_file = auth::identity_files(security_dir, "engine").cert_path;
    struct stat st {};
    if (::stat(cert_file.c_str(), &st) != 0) {
      return not_found("it does not know the engines' keys: give engine_keys (fingerprints) or engine_cafile "
                       "(--engine-key, --engine-cafile), or run where the cluster's shared engine certificate is (" +
                       cert_file + ")");
    }
    TESTUDO_ASSIGN_OR_RETURN(std::string pem, auth::load_identity_certificate(security_dir, "engine"));
    TESTUDO_ASSIGN_OR_RETURN(std::string fingerprint, tls::key_fingerprint_of_pem(pem));
    keys.push_back(fingerprint);
  }
  TESTUDO_ASSIGN_OR_RETURN(e2e::Roots roots, e2e::Roots::make(keys, options.engine_cafile));
  e2e::PairKey balanced;
  TESTUDO_RETURN_IF_ERROR(crypto::fill_random(balanced.id));
  TESTUDO_RETURN_IF_ERROR(crypto::fill_random(balanced.key));
  TESTUDO_ASSIGN_OR_RETURN(crypto::X25519KeyPair seal, e2e::client_seal_key(identity));
  TESTUDO_ASSIGN_OR_RETURN(std::string fingerprint, tls::key_fingerprint_of_pem(identity.cert_pem));
  return std::unique_ptr<ClientSeals>(
      new ClientSeals(std::move(roots), identity, balanced, seal, std::move(fingerprint)));
}

bool ClientSeals::knows(const std::vector<EngineId>& engines) const {
  std::lock_guard lock(mutex_);
  for (EngineId id : engines) {
    if (!pairs_.contains(id) && !statements_.contains(id)) return false;
  }
  return true;
}

std::vector<std::pair<EngineId, std::string>> ClientSeals::unknown(const std::vector<EngineId>& engines) const {
  std::lock_guard lock(mutex_);
  std::vector<std::pair<EngineId, std::string>> out;
  for (EngineId id : engines) {
    if (!pairs_.contains(id) && !statements_.contains(id)) out.emplace_back(id, wire::no_engine_text(id, next_engine_id_));
  }
  return out;
}

void ClientSeals::learn(std::string_view engine_list_json) {
  auto j = nlohmann::json::parse(engine_list_json, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object() || !j.contains("seal") || !j["seal"].is_object()) return;
  std::lock_guard lock(mutex_);
  learned_at_ = std::chrono::steady_clock::now();
  if (j.contains("next_engine_id") && j["next_engine_id"].is_number_unsigned() &&
      j["next_engine_id"].get<std::uint64_t>() <= 0xFFFFFFFFull) {
    next_engine_id_ = j["next_engine_id"].get<std::uint32_t>();
  }
  for (const auto& [id_text, statement] : j["seal"].items()) {
    char* end = nullptr;
    const unsigned long id = std::strtoul(id_text.c_str(), &end, 10);
    if (end == id_text.c_str() || *end != '\0' || id > 0xFFFFFFFFul || !statement.is_string()) continue;
    // The first statement for an id stays: ids are never reused, and a later one could only
    // be an attempt to swap the engine behind an id this client already talks to.
    statements_.emplace(static_cast<EngineId>(id), statement.get<std::string>());
  }
}

StatusOr<ClientSeals::Pair*> ClientSeals::pair_for(EngineId engine) {
  if (auto it = pairs_.find(engine); it != pairs_.end()) return &it->second;
  auto statement = statements_.find(engine);
  if (statement == statements_.end()) {
    return permission_denied(engine_name(engine) + " has published no seal key (it is not connected, or predates "
                             "end-to-end sealing)");
  }
  auto verified = e2e::verify_engine_seal_statement(statement->second, roots_, now_unix());
  if (!verified.ok()) return permission_denied("cannot verify " + engine_name(engine) + ": " + verified.status().message());
  // Two ids for one engine process would let the controller route one id's requests to the
  // other's engine: refused.
  for (const auto& [other, pair] : pairs_) {
    if (pair.engine.seal_key == verified->seal_key) {
      return permission_denied(engine_name(engine) + " and " + engine_name(other) +
                               " present the same engine process (one seal key): refusing both");
    }
  }
  Pair pair;
  pair.engine = std::move(verified).value();
  TESTUDO_RETURN_IF_ERROR(crypto::fill_random(pair.key.id));
  TESTUDO_RETURN_IF_ERROR(crypto::fill_random(pair.key.key));
  TESTUDO_ASSIGN_OR_RETURN(pair.offer,
                           e2e::make_pair_offer(identity_, pair.engine, pair.key, balanced_, seal_.public_key));
  return &pairs_.emplace(engine, std::move(pair)).first->second;
}

StatusOr<std::vector<e2e::PreparedSeal>> ClientSeals::prepare_request(std::uint64_t request_id,
                                                                      const wire::Envelope& head,
                                                                      const std::vector<EngineId>& targets,
                                                                      std::span<const SharedBytes> body) {
  struct Job {
    e2e::PairKey key;
    e2e::SealHeader header;
  };
  std::vector<Job> jobs;
  std::vector<Expectation> parts;
  const crypto::Digest digest = e2e::request_code_digest(head.kind, body);
  {
    std::lock_guard lock(mutex_);
    for (EngineId target : targets) {
      TESTUDO_ASSIGN_OR_RETURN(Pair * pair, pair_for(target));
      Job job{pair->key, {}};
      job.header.part = e2e::Part::kRequest;
      job.header.seq = pair->next_seq++;
      job.header.code_digest = digest;
      if (!pair->confirmed) job.header.offer = pair->offer;
      parts.push_back({target, pair->key.id, job.header.seq, head.kind, 0});
      jobs.push_back(std::move(job));
    }
  }
  std::vector<e2e::PreparedSeal> out;
  out.reserve(targets.size());
  for (std::size_t i = 0; i < targets.size(); ++i) {
    out.push_back(e2e::prepare_seal(jobs[i].key, std::move(jobs[i].header),
                                    {head.kind, head.kind_flags(), targets[i], 0}, body));
  }
  remember(request_id, std::move(parts));
  return out;
}

StatusOr<e2e::PreparedSeal> ClientSeals::prepare_balanced(std::uint64_t request_id, const wire::Envelope& head,
                                                          std::span<const SharedBytes> body) {
  e2e::SealHeader header;
  header.part = e2e::Part::kBalancedRequest;
  header.code_digest = e2e::request_code_digest(head.kind, body);
  {
    std::lock_guard lock(mutex_);
    header.seq = balanced_next_seq_++;
  }
  // The engine is not known yet: the reply names it, and must be sealed under its pair key.
  remember(request_id, {Expectation{wire::kAnyEngine, balanced_.id, header.seq, head.kind, 0}});
  return e2e::prepare_seal(balanced_, std::move(header), {head.kind, head.kind_flags(), wire::kAnyEngine, 0}, body);
}

void ClientSeals::remember(std::uint64_t request_id, std::vector<Expectation> parts) {
  std::lock_guard lock(mutex_);
  requests_[request_id] = std::move(parts);
  request_order_.push_back(request_id);
  while (request_order_.size() > kMaxRememberedRequests) {
    requests_.erase(request_order_.front());  // its tasks_ entries then find nothing
    request_order_.pop_front();
  }
}

std::vector<EngineId> ClientSeals::listed() const {
  std::lock_guard lock(mutex_);
  std::vector<EngineId> ids;
  for (const auto& [id, statement] : statements_) ids.push_back(id);
  return ids;
}

std::chrono::steady_clock::time_point ClientSeals::learned_at() const {
  std::lock_guard lock(mutex_);
  return learned_at_;
}

std::vector<EngineId> ClientSeals::paired(const std::vector<EngineId>& engines) const {
  std::lock_guard lock(mutex_);
  std::vector<EngineId> out;
  for (EngineId id : engines) {
    if (auto it = pairs_.find(id); it != pairs_.end() && it->second.confirmed) out.push_back(id);
  }
  return out;
}

std::vector<EngineId> ClientSeals::pairable(const std::vector<EngineId>& engines) {
  std::lock_guard lock(mutex_);
  std::vector<EngineId> out;
  for (EngineId id : engines) {
    auto pair = pair_for(id);  // verifies the engine once; unverifiable ones are left out
    if (pair.ok() && !(*pair)->confirmed) out.push_back(id);
  }
  return out;
}

StatusOr<std::string> ClientSeals::verify(EngineId engine) {
  std::lock_guard lock(mutex_);
  TESTUDO_ASSIGN_OR_RETURN(Pair * pair, pair_for(engine));
  return pair->engine.fingerprint;
}

void ClientSeals::submitted(std::uint64_t request_id, const std::vector<std::uint64_t>& task_ids) {
  std::lock_guard lock(mutex_);
  auto it = requests_.find(request_id);
  if (it == requests_.end()) return;
  for (std::size_t i = 0; i < task_ids.size() && i < it->second.size(); ++i) tasks_[task_ids[i]] = {request_id, i};
}

void ClientSeals::forget(std::uint64_t request_id) {
  std::lock_guard lock(mutex_);
  requests_.erase(request_id);
}

ClientSeals::Expectation* ClientSeals::expectation_of(std::uint64_t request_id, std::uint64_t task_id, EngineId engine) {
  if (task_id != 0) {
    if (auto t = tasks_.find(task_id); t != tasks_.end()) {
      auto r = requests_.find(t->second.first);
      if (r == requests_.end() || t->second.second >= r->second.size()) return nullptr;
      return &r->second[t->second.second];
    }
  }
  auto r = requests_.find(request_id);
  if (r == requests_.end()) return nullptr;
  for (auto& part : r->second) {
    if (part.engine == engine || part.engine == wire::kAnyEngine) return &part;
  }
  return nullptr;
}

ClientSeals::Verdict ClientSeals::open_reply(wire::Message& reply, std::string& why) {
  const Outcome outcome = reply.envelope.outcome();
  // The controller's own verdicts (engine died, aborted, ...) carry no body: nothing to open.
  if (outcome != Outcome::kOk && outcome != Outcome::kPythonError) return Verdict::kPlain;
  auto decoded = reply.segments.empty() ? StatusOr<e2e::SealHeader>(data_loss("no body"))
                                        : e2e::decode_seal_header(reply.segments[0].span());
  // What this process expects, if the reply answers a sealed request of its own: then the
  // engine, pair key and sequence number must match too. A stored result of another process
  // of this identity has no expectation here; its seal alone vouches for it.
  std::optional<Expectation> expected;
  e2e::KeyId pair_id{};
  e2e::Part expected_part = e2e::Part::kReply;
  EngineId engine = reply.envelope.engine_id;
  {
    std::lock_guard lock(mutex_);
    if (Expectation* e = expectation_of(reply.envelope.request_id, reply.envelope.task_id, reply.envelope.engine_id)) {
      expected = *e;
      const bool balanced = e->engine == wire::kAnyEngine;
      // A balanced request's reply comes from whichever engine ran it, under that engine's keys.
      if (!balanced) engine = e->engine;
      auto pair = pairs_.find(engine);
      if (pair == pairs_.end() || (!balanced && pair->second.key.id != e->key_id)) {
        why = "no pair key for " + engine_name(engine) + " (a reply from an engine this request was not sent to)";
        return Verdict::kBroken;
      }
      pair_id = pair->second.key.id;
      expected_part = balanced ? e2e::Part::kBalancedReply : e2e::Part::kReply;
    }
  }
  const std::string from = engine_name(engine);
  if (!decoded.ok()) {
    if (!expected) return Verdict::kPlain;  // an unsealed request's reply
    // Perhaps the engine's own refusal, which it cannot seal (it has no key for us).
    if (reply.segments.size() >= wire::kReplyFixedSegments) {
      auto meta = wire::decode_reply_meta(reply.segments[0]);
      if (meta.ok() && meta->ename == "SealError") {
        if (meta->evalue.starts_with("unknown pair key")) {
          // The engine lost our key (restarted, or evicted it): offer it again. Worst case,
          // a forged refusal makes us re-send an offer, which reveals nothing.
          std::lock_guard lock(mutex_);
          if (auto pair = pairs_.find(engine); pair != pairs_.end()) pair->second.confirmed = false;
        }
        why = from + " refused the sealed request: " + meta->evalue +
              " (this answer is not sealed, so the controller could have written it)";
        if (meta->evalue.find("is not among the keys this side trusts") != std::string::npos ||
            meta->evalue.find("trusts no client key") != std::string::npos) {
          // Sealing is on by default: say both ways out (never taken by itself, since the
          // controller could forge this refusal to talk the client out of sealing).
          why += "; the engines' owner can trust this key (" + fingerprint_ +
                 ": engine --trust-client, or a CA with --client-cafile), or this client can stop sealing "
                 "(e2e=False, --no-e2e) if the controller may read its work";
        }
        return Verdict::kBroken;
      }
    }
    why = "the reply from " + from + " to a sealed request is not sealed: dropped (the controller or a relay wrote or "
          "altered it)";
    return Verdict::kBroken;
  }
  const e2e::SealHeader& header = *decoded;
  if (expected && (header.part != expected_part || header.key_id != pair_id || header.seq != expected->seq)) {
    why = "the reply from " + from + " is sealed for another request (a swapped or replayed reply): dropped";
    return Verdict::kBroken;
  }
  if (!expected && header.part != e2e::Part::kReply && header.part != e2e::Part::kBalancedReply) {
    why = "the result of task " + std::to_string(reply.envelope.task_id) + " is not a sealed reply";
    return Verdict::kBroken;
  }
  auto key = result_key(header);
  if (!key.ok()) {
    why = "the sealed result of task " + std::to_string(reply.envelope.task_id) + " from " + from +
          " cannot be opened here: " + key.status().message();
    return Verdict::kBroken;
  }
  auto plain = e2e::open_body({header.key_id, *key}, header,
                              {wire::MessageKind::kTaskReply, 0, engine, static_cast<std::uint16_t>(outcome),
                               reply.envelope.task_id},
                              e2e::take_sealed_body(reply));
  if (!plain.ok()) {
    why = "the sealed reply from " + from + " does not open: it was altered on the way, or is not " + from +
          "'s answer to task " + std::to_string(reply.envelope.task_id);
    return Verdict::kBroken;
  }
  if (expected) {
    std::lock_guard lock(mutex_);
    if (auto pair = pairs_.find(engine); pair != pairs_.end() && pair->second.key.id == pair_id) {
      pair->second.confirmed = true;  // the engine holds the key: no more offers
    }
    // A balanced request runs once, on one engine. A second genuine answer (its engine's seal,
    // the request's sequence number) means the controller gave it to another engine too; the
    // engines cannot tell (each holds the balanced key), the client can.
    Expectation* e = expectation_of(reply.envelope.request_id, reply.envelope.task_id, reply.envelope.engine_id);
    if (e != nullptr && e->engine == wire::kAnyEngine) {
      if (e->answered_by && *e->answered_by != engine) {
        why = "balanced request " + std::to_string(reply.envelope.request_id) + " (task " +
              std::to_string(reply.envelope.task_id) + ") was run by " + engine_name(*e->answered_by) + " and again by " +
              from + ": the controller handed it to two engines";
        return Verdict::kDuplicate;
      }
      e->answered_by = engine;
    }
  }
  reply.segments = std::move(plain).value();
  reply.envelope.engine_id = engine;
  return Verdict::kOpened;
}

StatusOr<crypto::AeadKey> ClientSeals::result_key(const e2e::SealHeader& header) {
  {
    std::lock_guard lock(mutex_);
    // A grant checked once is not checked again, as long as it is byte for byte the same.
    if (auto it = grants_.find(header.key_id); it != grants_.end() && it->second.first == header.result_key) {
      return it->second.second;
    }
  }
  if (header.result_key.empty()) return permission_denied("the reply carries no result key");
  TESTUDO_ASSIGN_OR_RETURN(e2e::OpenedGrant opened,
                           e2e::open_result_key(header.result_key, header.key_id, fingerprint_, seal_, roots_, now_unix()));
  std::lock_guard lock(mutex_);
  if (grants_.size() >= kMaxGrants) grants_.clear();  // re-checked on next use, nothing lost
  grants_[header.key_id] = {header.result_key, opened.key};
  return opened.key;
}

std::optional<std::string> ClientSeals::open_output(const wire::Message& chunk, bool& was_sealed) {
  was_sealed = false;
  Expectation expected;
  e2e::PairKey key;
  {
    std::lock_guard lock(mutex_);
    Expectation* e = expectation_of(chunk.envelope.request_id, 0, chunk.envelope.engine_id);
    if (e == nullptr) return std::nullopt;
    was_sealed = true;
    expected = *e;
    if (expected.engine == wire::kAnyEngine) expected.engine = chunk.envelope.engine_id;  // balanced
    auto pair = pairs_.find(expected.engine);
    if (pair == pairs_.end() || chunk.segments.size() != 2) return std::nullopt;
    key = pair->second.key;
  }
  auto header = e2e::decode_seal_header(chunk.segments[0].span());
  if (!header.ok() || header->part != e2e::Part::kOutput || header->key_id != key.id ||
      header->seq != expected.seq) {
    return std::nullopt;
  }
  auto plain = e2e::open_body(key, *header,
                              {expected.kind, static_cast<std::uint16_t>(chunk.envelope.output_stream()), expected.engine, 0},
                              std::span(chunk.segments).subspan(1));
  if (!plain.ok()) return std::nullopt;
  {
    // Each chunk once, in order: a replayed or reordered one is dropped.
    std::lock_guard lock(mutex_);
    Expectation* e = expectation_of(chunk.envelope.request_id, 0, chunk.envelope.engine_id);
    if (e == nullptr || header->chunk <= e->last_chunk) return std::nullopt;
    e->last_chunk = header->chunk;
  }
  return plain->at(0).to_string();
}

}  // namespace testudo::client
