// The testudo C++ client: connect to a controller with a connection file, list engines, and
// run execute / push / pull / apply on chosen engines, asynchronously.
//
//   auto client = testudo::Client::connect({.profile = "default"});
//   auto ids = (*client)->engine_ids();
//   auto r = (*client)->execute(*ids, "c = a + b");
//   auto replies = r.get(std::chrono::seconds(10));   // one EngineReply per target
//
// Thread-safety: a Client may be used from several threads at once; AsyncResult too.
// The client runs its own network thread; results are delivered to AsyncResult objects.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "testudo/outcome.h"
#include "testudo/shared_bytes.h"
#include "testudo/status.h"

namespace testudo {

using EngineId = std::uint32_t;

// The target slot of a load-balanced request: the scheduler picks the engine, and the reply
// names it.
inline constexpr EngineId kAnyEngine = 0xFFFFFFFFu;

// How the controller schedules a load-balanced request (ipyparallel's task flags).
// Which outcomes of `after` / `follow` tasks meet a dependency, as ipyparallel's Dependency:
// every task or any one, counting those that succeeded and/or those that failed (at least one).
struct DependencyRule {
  bool all = true;
  bool success = true;
  bool failure = false;
};

struct TaskOptions {
  std::uint32_t retries = 0;  // run again elsewhere if its engine dies, this many times
  // How long the dependencies may take to be met; unset: no limit.
  std::optional<std::chrono::milliseconds> timeout;
  std::vector<std::uint64_t> after;   // task ids (AsyncResult::task_ids) that must succeed first
  std::vector<std::uint64_t> follow;  // ... and where it must run
  DependencyRule after_rule;          // default: every one of them, succeeded
  DependencyRule follow_rule;         // (follow: it runs where the ones that count ran)
};

struct ClientOptions {
  // The controller-client.json to use; default: the one of `profile`.
  std::string connection_file;
  std::string profile = "default";
  // Connecting (TCP + TLS + authentication) must finish within this time.
  std::chrono::milliseconds connect_timeout{10'000};
  // Control requests (engine list, status, shutdown) must be answered within this time.
  std::chrono::milliseconds request_timeout{10'000};
  // This user's identity: <identity_dir>/<identity_name>-{key,cert}.pem, made on first use
  // (default dir: $TESTUDO_HOME/identity). Its key fingerprint owns the tasks submitted.
  std::string identity_dir;
  std::string identity_name = "client";
  // Where an encrypted key's passphrase comes from: "prompt", "file:PATH", "env:NAME" or
  // "command:CMD" (default: $TESTUDO_KEY_PASSPHRASE_FROM, else prompt).
  std::string key_passphrase_from;
  // Or a function that returns it (Python's Client(key_passphrase_from=callable)); it wins
  // over key_passphrase_from. Called only when the key is encrypted.
  std::function<StatusOr<std::string>()> key_passphrase;
  // Dial this address instead of the one in the connection file: the local end of an SSH
  // tunnel to the controller. The controller is still pinned by the file's fingerprint and
  // the capability proven as always; the tunnel adds reachability, not trust. Empty: the file's.
  std::string dial_host;
  std::uint16_t dial_port = 0;
  // How this client proves who it is (docs/security.md, "Logins"). Default (method "" or
  // "key"): the identity key above. "password": SCRAM-SHA-256-PLUS as `username` with the
  // password `secret` returns; "token": the JSON Web Token `secret` returns (asked again
  // when it expires); "kerberos": the user's credential cache (kinit) for `service` (empty:
  // the default service principal). With a login, no identity key is read or made.
  struct Login {
    std::string method;
    std::string username;
    std::function<StatusOr<std::string>()> secret;
    std::string service;
  } login;
  // End-to-end sealing (docs/security.md, "End-to-end sealing"). On: every request is sealed
  // for the engines that run it and only their sealed replies are accepted; a request to an
  // engine this client cannot verify fails with Outcome::kSealBroken, as does a reply the
  // controller altered, swapped or forged. Needs the identity key (not a login). Engines are
  // verified against `engine_keys` (key fingerprints) and/or `engine_cafile`; neither given:
  // the shared engine certificate of the profile (security/engine-cert.pem), which the
  // engines `cluster start` launches present. A load-balanced request goes only to engines
  // this client paired with (it pairs with the listed ones first); stored results open in
  // any process of this identity that seals.
  enum class E2e {
    // The default: on when this client can seal, judged from what it holds itself (never
    // from what the controller says, which could talk it out of sealing): it signs in with
    // its identity key, and it has a root for engine keys (engine_keys, engine_cafile, or
    // the profile's shared engine certificate on this machine). Otherwise off, and
    // Client::sealing() says why.
    kWhenPossible,
    kRequired,  // on, or Client::connect fails saying why it cannot be
    kOff,
  };
  E2e e2e = E2e::kWhenPossible;
  // With e2e: a direct request whose sealed body is at least this many bytes per engine sends
  // that body on a data connection the controller splices to the engine without reading it
  // (docs/protocol.md "The bulk path"): one encryption here, one decryption there, no TLS
  // hop through the controller. 0: never.
  std::uint64_t bulk_from_bytes = 1u << 20;
  std::vector<std::string> engine_keys;
  std::string engine_cafile;
};

// The address a connection file tells clients to dial (e.g. to open a tunnel to it first).
// Loads the file as Client::connect does (owner-only mode checked).
struct ControllerAddress {
  std::string host;
  std::uint16_t port = 0;
  // The file's SSH gateway ("ssh" field) when this process must use it: empty if the file has
  // none, or if `host` is an address of this machine (a client on the controller's host dials
  // it directly, as ipyparallel's does).
  std::string ssh;
};
StatusOr<ControllerAddress> controller_address(const ClientOptions& options);

// A Python exception raised by user code on an engine.
struct RemoteError {
  std::string ename;      // "ZeroDivisionError"
  std::string evalue;     // "division by zero"
  std::string traceback;  // formatted, as Python prints it
};

// What one engine did with one request.
struct EngineReply {
  EngineId engine_id = 0;
  std::uint64_t task_id = 0;  // the controller's id for this (request, engine)
  // What became of it (testudo/outcome.h): kOk, the engine ran it and it succeeded;
  // kPythonError, the user's code raised (see remote_error); anything else, it did not run
  // to an answer, and status.message() says why.
  Outcome outcome = Outcome::kOk;
  // outcome_status(outcome, reason): the same, as a Status (status.outcome() == outcome
  // unless OK; the code is status_code(outcome)).
  Status status;
  std::optional<RemoteError> remote_error;
  std::string stdout_text;
  std::string stderr_text;
  // The value: for pickled pulls/applies [pickle, out-of-band buffers...]; for repr pulls one
  // repr text per name.
  std::vector<SharedBytes> value;
  std::uint64_t started_us = 0;    // engine clock, µs since the epoch; 0 if it never ran
  std::uint64_t completed_us = 0;
};

// The pending outcome of one request sent to one or more engines.
class AsyncResult {
 public:
  struct State;
  AsyncResult() = default;
  explicit AsyncResult(std::shared_ptr<State> state) : state_(std::move(state)) {}

  std::uint64_t request_id() const;
  const std::vector<EngineId>& targets() const;
  bool ready() const;
  // True once every target has replied (or failed); false if `timeout` passed first.
  bool wait(std::chrono::milliseconds timeout) const;
  // The replies in target order, or kDeadlineExceeded if they did not all arrive in time (a
  // local timeout, not an outcome: the request goes on).
  StatusOr<std::vector<EngineReply>> get(std::chrono::milliseconds timeout) const;
  // The controller's task ids for this request, one per target, in target order: the handles
  // under which results can be fetched later (Client::get_result), also from another process
  // of the same user. Waits for the controller's acknowledgement.
  StatusOr<std::vector<std::uint64_t>> task_ids(std::chrono::milliseconds timeout) const;
  // Calls `fn` once, on the client's network thread, when the result is ready (at once if it is).
  void on_ready(std::function<void()> fn) const;

 private:
  std::shared_ptr<State> state_;
};

// Every call that asks the controller something (engine_ids ... key_admin) fails with a Status
// whose outcome() says why: kNotAllowed (the policy refused it), kInvalidRequest, kNotFound,
// kControllerFailed (key administration and stored-result queries), kConnectionLost; or
// kDeadlineExceeded without an outcome when no answer came within request_timeout.
class Client {
 public:
  static StatusOr<std::unique_ptr<Client>> connect(const ClientOptions& options);
  ~Client();  // closes the connection; pending results fail with Outcome::kConnectionLost
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  std::uint32_t client_id() const;
  bool connected() const;

  // Live output of running tasks, as it is written: (request id, engine id, stream 1 for
  // stdout or 2 for stderr, text). Runs on the client's network thread: keep it short. The
  // final EngineReply still carries the whole output.
  using OutputHandler = std::function<void(std::uint64_t request_id, EngineId engine, int stream, std::string_view text)>;
  void set_output_handler(OutputHandler handler);

  StatusOr<std::vector<EngineId>> engine_ids();
  // The controller's status report (JSON text: engines, clients, tasks...).
  StatusOr<std::string> cluster_status();
  // Asks the controller to stop every engine and itself.
  Status shutdown_cluster();
  // Asks only these engines to exit; the controller stays. Returns how many were asked.
  StatusOr<std::size_t> shutdown_engines(const std::vector<EngineId>& targets);
  // {"engines": [ids], "tags": {"<id>": {"hostname": ..., "cores": ..., user tags...}}}
  StatusOr<std::string> engines_json();

  // Each engine's reply has one value segment, JSON: {"execution_count": n} and, with
  // display_result and a trailing expression whose value is not None, "data" (mime type ->
  // text; "text/plain" is what IPython's Out[...] shows) and "metadata".
  AsyncResult execute(const std::vector<EngineId>& targets, std::string_view code, bool display_result = false);
  // name -> Python literal text (evaluated on the engine with ast.literal_eval).
  AsyncResult push_literals(const std::vector<EngineId>& targets,
                            const std::vector<std::pair<std::string, std::string>>& values);
  // [pickle of a dict, out-of-band buffers...] (pickle protocol 5).
  AsyncResult push_pickled(const std::vector<EngineId>& targets, std::vector<SharedBytes> pickle_and_buffers);
  AsyncResult pull_repr(const std::vector<EngineId>& targets, const std::vector<std::string>& names);
  AsyncResult pull_pickled(const std::vector<EngineId>& targets, const std::vector<std::string>& names);
  // [pickle of (f, args, kwargs), out-of-band buffers...].
  AsyncResult apply(const std::vector<EngineId>& targets, std::vector<SharedBytes> pickle_and_buffers);

  // One task the controller's scheduler places on one of `allowed` (empty: any engine).
  // The result has one reply, whose engine_id says where it ran.
  AsyncResult apply_balanced(const std::vector<EngineId>& allowed, std::vector<SharedBytes> pickle_and_buffers,
                             const TaskOptions& options = {});
  AsyncResult execute_balanced(const std::vector<EngineId>& allowed, std::string_view code,
                               const TaskOptions& options = {});

  // Aborts this connection's tasks that are still queued or waiting (running ones go on);
  // their replies fail with Outcome::kAborted. Returns how many tasks were aborted.
  StatusOr<std::size_t> abort(const std::vector<std::uint64_t>& task_ids);
  // Raises KeyboardInterrupt in whatever runs on `targets` now. Returns engines reached.
  StatusOr<std::size_t> interrupt(const std::vector<EngineId>& targets);
  // Per engine: queued, running and completed tasks; plus unassigned and waiting (JSON).
  StatusOr<std::string> queue_status();

  // Results the controller keeps for this user's tasks (same identity, any connection or
  // process): one reply per task id, in order; a task still running answers when it ends.
  // Outcome::kNoSuchTask: no such task of this user (or purged); kLost: lost when the
  // controller stopped before it finished; otherwise as the original reply.
  AsyncResult get_result(const std::vector<std::uint64_t>& task_ids);
  // {"records": [{task_id, state, kind, engine, submitted, started, completed, result_bytes,
  // error}...]} for these ids ("state": "unknown" for ids that are not this user's).
  StatusOr<std::string> result_status(const std::vector<std::uint64_t>& task_ids);
  // Records of this user's tasks matching `filter_json` ({"states": [...], "after_task_id":
  // n, "submitted_after": seconds, "limit": n}), as result_status.
  StatusOr<std::string> db_query(const std::string& filter_json);
  // Deletes this user's finished results among `task_ids` (empty: all of them).
  StatusOr<std::size_t> purge_results(const std::vector<std::uint64_t>& task_ids);

  // End-to-end sealing (ClientOptions::e2e): for each engine the controller lists, whether
  // this client verified its seal key against its own roots, and the key fingerprint or why
  // not. kFailedPrecondition when sealing is off for this client.
  struct SealingVerdict {
    EngineId engine = 0;
    bool verified = false;
    std::string detail;
  };
  StatusOr<std::vector<SealingVerdict>> sealing_check();
  // What sealing caught the controller doing behind this client's back, oldest first (at most
  // 1,000), each also logged as an error: today, a balanced request that two engines answered
  // genuinely (the controller handed it to both, so it ran twice). Empty for an honest
  // controller, and always without e2e.
  std::vector<std::string> seal_violations() const;
  // Whether this client seals (ClientOptions::e2e), and if not, why not (empty when it does).
  struct Sealing {
    bool on = false;
    std::string why_off;
  };
  Sealing sealing() const;

  // Key administration on the controller (the policy's "keys" operation): `action` is list,
  // show, accept, reject or revoke; `who` a fingerprint or unique prefix. Returns the JSON
  // reply ({"mode", "entries": [...]} for list, {"entry": {...}} otherwise).
  StatusOr<std::string> key_admin(const std::string& action, const std::string& who = "");

 private:
  Client();
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace testudo
