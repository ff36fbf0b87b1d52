// EngineIds: which engine id each engine process holds, for the whole life of a cluster.
//
// The rule (docs/architecture.md, "Engine ids"): an engine process keeps its id across its own
// reconnects and across controller restarts with --reuse; a new process (a restarted engine,
// with an empty namespace) gets a new id; an id is never given to a second process while
// this cluster lives, so a request addressed to it can only reach the namespace it was meant for.
//
// An engine process is known by its key fingerprint (proved by TLS) and the random instance id
// it says in every hello (auth::Hello::instance, 128 bits made at process start): both must
// match for an id to come back, so neither a second process under the shared engine key nor a
// peer that learned an instance id under another key can take over an engine's id. Only a
// SHA-256 of the pair is kept.
//
// Persistence: with a path, every new id is written to that file (JSON, owner-only, replaced
// atomically: tmp + fsync + rename) before assign() returns it, so no crash can lead to an id
// being handed out twice. open() with `resume` reads the previous run's file; without it, the
// old file is ignored and replaced at the first write (a cluster started without --reuse has new
// capabilities: none of the old engines can come back anyway). Writes happen once per new engine
// process, never per task or per reconnect.
//
// Threading: not thread-safe; the hub's loop thread.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>

#include "testudo/status.h"

namespace testudo::controller {

class EngineIds {
 public:
  // At most this many engine processes are remembered; beyond it the lowest ids are forgotten
  // (such an engine, should it reconnect, gets a new id: a refusal, never a wrong namespace).
  static constexpr std::size_t kMaxRemembered = 1u << 16;

  // Memory only: ids are remembered as long as this object lives (hub tests).
  EngineIds() = default;
  // Backed by `path` (e.g. <profile>/state/engine-ids.json), whose directory must exist.
  // With `resume`, the file of the previous run is read (absent: a fresh start). Errors: a
  // malformed file or one of a newer format (kDataLoss / kFailedPrecondition, naming the file);
  // a file readable by others (kPermissionDenied).
  static StatusOr<std::unique_ptr<EngineIds>> open(std::string path, bool resume);

  struct Assigned {
    std::uint32_t id = 0;
    bool returning = false;  // the id this process had before (a reconnect or a controller restart)
  };
  // The id of the engine process (`fingerprint`, `instance`): the one it had, or the next new
  // one. An empty instance is never remembered (a new id each time). A new id is written to the
  // file first; if that fails, nothing changes and the error is returned (the engine is refused,
  // and may try again).
  StatusOr<Assigned> assign(std::string_view fingerprint, std::string_view instance);

  // True if `id` has been given to some engine process in this cluster's life: if no engine
  // holds it now, that engine is gone (or reconnecting), and the id will not go to anyone else.
  bool issued(std::uint32_t id) const { return id < next_id_; }
  std::uint32_t next_id() const { return next_id_; }
  // Whether open() read a previous run's file, and the ids that run remembered (else empty).
  bool resumed() const { return resumed_; }
  const std::set<std::uint32_t>& from_previous_run() const { return previous_run_; }

 private:
  Status save() const;

  std::string path_;  // empty: memory only
  std::uint32_t next_id_ = 0;
  std::map<std::string, std::uint32_t> by_key_;  // hex SHA-256(fingerprint, instance) -> id
  std::map<std::uint32_t, std::string> by_id_;   // the same, the other way (the lowest go first)
  std::set<std::uint32_t> previous_run_;
  bool resumed_ = false;
};

}  // namespace testudo::controller
