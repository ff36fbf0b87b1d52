// The controller process: loads or creates its TLS identity and the two capabilities, listens
// (the only listening process of a cluster), writes the connection files, and runs the hub
// until asked to stop (SIGINT/SIGTERM or a client's shutdown request).
// Threading: create() and run() on one thread; request_stop() from anywhere.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "testudo/status.h"

namespace testudo::controller {

struct ControllerOptions {
  std::string profile = "default";     // files under $TESTUDO_HOME/profile_<profile>/
  std::string ip = "127.0.0.1";        // bind address; loopback unless told otherwise ("*": every interface)
  std::uint16_t port = 0;              // 0: random (or the previous one with reuse)
  std::string location;                // address written into connection files; default: see
                                       //   controller/location.h (ip, or this host's name for a wildcard ip)
  bool reuse = false;                  // keep key, certificate, capabilities and port of the last run
  // A fixed port (given, or the last one with reuse) held by another socket: wait this long for
  // it, trying every 200 ms, before failing. While a controller restarts, a local user may
  // hold its port (with their own certificate, which engines and clients refuse by the pin);
  // the controller takes the port back as soon as it is free.
  std::chrono::milliseconds port_wait{0};
  // SSH gateways written into the client and the engine connection file ("ssh" field): those
  // off this host reach the controller through them (auth/connection_file.h). Empty: none.
  std::string ssh_server;
  std::string engine_ssh_server;
  std::chrono::milliseconds heartbeat_timeout{10'000};
  std::chrono::milliseconds hello_timeout{10'000};
  std::uint64_t max_message_bytes = 4ull << 30;
  // Bytes of requests held for engines, per client and in all, before the controller stops
  // reading from the clients over them until the bytes drain (controller/byte_budget.h).
  std::uint64_t client_queue_bytes = 1ull << 30;
  std::uint64_t queue_bytes = 4ull << 30;
  // Unfinished tasks one client may have before it is not read until some finish (0: no limit).
  std::uint64_t client_max_tasks = 1'000'000;
  std::uint64_t max_tasks = 4'000'000;  // the same for all clients together
  // A direct request with at least this many bytes after its first segment is forwarded to
  // its engines while it arrives, the controller holding a window of it (0: never).
  std::uint64_t relay_from_bytes = 16ull << 20;
  // Unread reply bytes a client's connection may hold before further replies wait in the task
  // store instead (0: no limit).
  std::uint64_t client_reply_queue_bytes = 256ull << 20;
  // The task store (state/tasks.sqlite): results kept this long and up to this many bytes.
  std::chrono::seconds result_max_age{7 * 24 * 3600};
  std::uint64_t result_max_bytes = 4ull << 30;
  std::string scheme = "leastload";    // load-balancing scheme
  // Load-balanced tasks (and direct ones sent ahead) per engine at once: "auto" (adapts to
  // task times, 2 to 32; see controller/scheduler.h), or a number (0: no limit).
  std::string hwm = "auto";

  // Identities and authorization (docs/security.md).
  std::string trust = "manual";        // manual | learn | ca (see controller/gatekeeper.h)
  bool auto_accept = false;            // learn: admit unknown identities at once
  std::string cafile;                  // ca: admit certificates this CA signed
  std::string crlfile;                 // ca: its revocation list (reloaded on change)
  std::string certfile;                // the controller's own certificate and key (e.g. from the CA);
  std::string keyfile;                 //   default: a self-signed one kept in controller-state.json
  std::string key_passphrase_from;     // passphrase source for keyfile (auth/passphrase.h)
  std::string policy_file;             // default: only the owner (the user running the controller) may act
  // Password logins (SCRAM-SHA-256-PLUS; auth/user_file.h): the user file, re-read when it
  // changes. Default: the profile's security/users.json when it exists at start, else no
  // password logins.
  std::string users_file;
  std::string audit_log;               // default: <profile>/log/audit.jsonl
  std::string token_issuers;           // JSON Web Token logins: the issuers file (auth/token_issuers.h);
                                       //   default: no token logins
  std::uint64_t audit_max_bytes = 256ull << 20;  // rotated beyond this, 8 old files kept
  // Kerberos logins (auth/kerberos_login.h): the service's keytab (owner-only) turns them on;
  // the principal defaults to testudo/<location> in the default realm of krb5.conf.
  std::string keytab;
  std::string service_principal;
  std::string tls_min_version = "1.3";
  std::string tls_ciphersuites;        // TLS 1.3 suites; empty: OpenSSL's AEAD defaults
  // Trust the shared engine identity (security/engine-*.pem, used by `cluster start`'s
  // engines) and the local user's client identity, who owns the built-in policy.
  bool trust_local = true;
  // With trust_local, certificates (PEM, public) that stand in for those two: the owner is the
  // client identity in owner_cert_file and the shared engine identity the one in
  // engine_cert_file. A controller started on another host (`cluster start --controller ssh`)
  // is owned by the user who started it there, whose private keys never leave their machine.
  std::string owner_cert_file;
  std::string engine_cert_file;
};

class Controller {
 public:
  static StatusOr<std::unique_ptr<Controller>> create(const ControllerOptions& options);
  ~Controller();

  // Serves until stopped. Returns OK after a clean shutdown.
  Status run();
  void request_stop();  // thread-safe
  std::uint16_t port() const;

 private:
  Controller();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace testudo::controller
