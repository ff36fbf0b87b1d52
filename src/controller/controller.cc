#include "controller/controller.h"
#include "controller/login_setup.h"

#include <charconv>
#include <fstream>
#include <iterator>
#include <thread>
#include <random>

#include <nlohmann/json.hpp>

#include <malloc.h>
#include <sys/resource.h>

#include <csignal>

#include "auth/connection_file.h"
#include "auth/identity.h"
#include "base/log.h"
#include "base/profile.h"
#include "controller/gatekeeper.h"
#include "controller/hub.h"
#include "controller/location.h"
#include "controller/stored_results.h"
#include "crypto/crypto.h"
#include "crypto/private_file.h"
#include "net/net.h"
#include "tls/tls.h"

namespace testudo::controller {
namespace {

// What a controller keeps between runs with --reuse (security/controller-state.json, 0600).
struct PersistentState {
  tls::KeyAndCertificate identity;
  auth::Capability client_capability{};
  auth::Capability engine_capability{};
  std::uint16_t port = 0;
};

StatusOr<PersistentState> fresh_state() {
  PersistentState s;
  TESTUDO_ASSIGN_OR_RETURN(s.identity, tls::generate_self_signed("testudo-controller"));
  TESTUDO_ASSIGN_OR_RETURN(s.client_capability, crypto::random_secret());
  TESTUDO_ASSIGN_OR_RETURN(s.engine_capability, crypto::random_secret());
  return s;
}

StatusOr<auth::Capability> capability_from_hex(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_string()) return invalid_argument(std::string("missing ") + key);
  auto bytes = crypto::from_hex(it->get<std::string>());
  auth::Capability c{};
  if (!bytes.ok() || bytes->size() != c.size()) return invalid_argument(std::string("bad ") + key);
  std::copy(bytes->begin(), bytes->end(), c.begin());
  return c;
}

StatusOr<PersistentState> load_state(const std::string& path) {
  TESTUDO_ASSIGN_OR_RETURN(std::string text, crypto::read_private_file(path, "controller state file"));
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("key_pem") || !j["key_pem"].is_string() ||
      !j.contains("cert_pem") || !j["cert_pem"].is_string() || !j.contains("port") || !j["port"].is_number_unsigned()) {
    return invalid_argument("controller state file " + path + " is malformed; start without --reuse to replace it");
  }
  PersistentState s;
  s.identity.key_pem = j["key_pem"].get<std::string>();
  s.identity.cert_pem = j["cert_pem"].get<std::string>();
  s.port = static_cast<std::uint16_t>(j["port"].get<std::uint64_t>());
  TESTUDO_ASSIGN_OR_RETURN(s.client_capability, capability_from_hex(j, "client_capability"));
  TESTUDO_ASSIGN_OR_RETURN(s.engine_capability, capability_from_hex(j, "engine_capability"));
  TESTUDO_RETURN_IF_ERROR(tls::check_key_matches_certificate(s.identity));
  return s;
}

Status save_state(const std::string& path, const PersistentState& s) {
  nlohmann::json j = {{"key_pem", s.identity.key_pem},
                      {"cert_pem", s.identity.cert_pem},
                      {"client_capability", crypto::to_hex(s.client_capability)},
                      {"engine_capability", crypto::to_hex(s.engine_capability)},
                      {"port", s.port}};
  return crypto::write_private_file(path, j.dump(2) + "\n");
}


// Listener::create, waiting up to `wait` for an address another socket holds (see
// ControllerOptions::port_wait); says once that it waits, and for whom.
StatusOr<std::unique_ptr<net::Listener>> listen_when_free(net::EventLoop& loop, const net::ListenOptions& listen,
                                                          std::chrono::milliseconds wait,
                                                          net::Listener::AcceptHandler on_accept) {
  const auto deadline = std::chrono::steady_clock::now() + wait;
  bool said = false;
  while (true) {
    auto listener = net::Listener::create(loop, listen, on_accept);
    if (listener.ok() || listener.status().code() != StatusCode::kAlreadyExists || listen.port == 0) return listener;
    if (std::chrono::steady_clock::now() >= deadline) {
      return unavailable(listener.status().message() +
                         (wait.count() > 0 ? " (waited " + std::to_string(wait.count() / 1000) + " s)" : std::string()) +
                         "; is another controller of this profile running, or did another user take the port?");
    }
    if (!said) {
      LOG_WARN("controller") << "port " << listen.port << " is held by another process; waiting up to "
                             << wait.count() / 1000 << " s for it (engines and clients refuse whoever holds it "
                             << "by the certificate pin)";
      said = true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

// A certificate file given on the command line (public: any mode will do), checked to hold
// one PEM certificate whose key can be named.
StatusOr<std::string> read_certificate_file(const std::string& path, const std::string& option) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return not_found(option + ": cannot read " + path);
  std::string pem((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (pem.size() > 64 * 1024 || !tls::key_fingerprint_of_pem(pem).ok()) {
    return invalid_argument(option + ": " + path + " is not a PEM certificate");
  }
  return pem;
}

// The gatekeeper for `options`, with the local user's client identity as owner and the
// shared engine identity trusted (unless trust_local is off).
StatusOr<std::unique_ptr<Gatekeeper>> make_gatekeeper(const ControllerOptions& options, const ProfilePaths& paths) {
  GatekeeperOptions g;
  auto mode = parse_trust_mode(options.trust);
  if (!mode) return invalid_argument("unknown trust mode '" + options.trust + "': manual, learn or ca");
  g.mode = *mode;
  g.auto_accept = options.auto_accept;
  g.trust_dir = paths.security_dir + "/trust";
  g.ca_file = options.cafile;
  g.crl_file = options.crlfile;
  g.policy_file = options.policy_file;
  g.audit_log = options.audit_log.empty() ? paths.log_dir + "/audit.jsonl" : options.audit_log;
  g.audit_max_bytes = options.audit_max_bytes;
  std::string owner_cert;
  if (options.trust_local) {
    if (!options.owner_cert_file.empty()) {
      TESTUDO_ASSIGN_OR_RETURN(owner_cert, read_certificate_file(options.owner_cert_file, "--owner-cert"));
    } else {
      // The user who runs the controller owns it: their client identity (made now if they have
      // none; only the certificate is read, so an encrypted key needs no passphrase here).
      TESTUDO_ASSIGN_OR_RETURN(owner_cert,
                               auth::load_or_create_identity_certificate(testudo_home() + "/identity", "client"));
    }
    TESTUDO_ASSIGN_OR_RETURN(std::string owner, tls::key_fingerprint_of_pem(owner_cert));
    g.owners.push_back(owner);
  } else if (!options.owner_cert_file.empty() || !options.engine_cert_file.empty()) {
    return invalid_argument("--owner-cert and --engine-cert name whom trust_local trusts: not with --no-trust-local");
  }
  TESTUDO_ASSIGN_OR_RETURN(auto gate, Gatekeeper::create(std::move(g)));
  if (options.trust_local) {
    TESTUDO_RETURN_IF_ERROR(gate->trust_identity(wire::Role::kClient, owner_cert, "owner"));
    // One key pair for the engines this profile launches ("shared engine identity").
    std::string engine_cert;
    if (!options.engine_cert_file.empty()) {
      TESTUDO_ASSIGN_OR_RETURN(engine_cert, read_certificate_file(options.engine_cert_file, "--engine-cert"));
    } else {
      TESTUDO_ASSIGN_OR_RETURN(engine_cert,
                               auth::load_or_create_identity_certificate(paths.security_dir, "engine", {"testudo-engine"}));
    }
    TESTUDO_RETURN_IF_ERROR(gate->trust_identity(wire::Role::kEngine, engine_cert, "shared engine identity"));
  }
  return gate;
}

// The controller's TLS identity from --certfile/--keyfile (decrypting the key if needed).
StatusOr<tls::KeyAndCertificate> load_given_identity(const ControllerOptions& options) {
  if (options.certfile.empty() != options.keyfile.empty()) return invalid_argument("--certfile and --keyfile go together");
  std::optional<std::string> passphrase;
  TESTUDO_ASSIGN_OR_RETURN(std::string key_pem, crypto::read_private_file(options.keyfile, "controller private key"));
  if (tls::is_encrypted_private_key_pem(key_pem)) {
    auth::PassphraseSource from;
    if (!options.key_passphrase_from.empty()) {
      TESTUDO_ASSIGN_OR_RETURN(from, auth::parse_passphrase_source(options.key_passphrase_from));
    } else {
      TESTUDO_ASSIGN_OR_RETURN(from, auth::default_passphrase_source());
    }
    TESTUDO_ASSIGN_OR_RETURN(passphrase, auth::read_passphrase(from, "controller private key " + options.keyfile));
  }
  auto kc = tls::load_key_and_certificate(options.keyfile, options.certfile, passphrase);
  if (passphrase) crypto::wipe(*passphrase);
  return kc;
}

// One descriptor per engine and client connection: a soft limit of 1,024 (a common default)
// would cap the cluster below a thousand peers, so take the hard limit.
void raise_open_file_limit() {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= rl.rlim_max) return;
  rl.rlim_cur = rl.rlim_max;
  if (::setrlimit(RLIMIT_NOFILE, &rl) != 0) LOG_WARN("controller") << "cannot raise the open file limit";
}

}  // namespace

// Members are destroyed in reverse order: each outlives what is declared after it.
struct Controller::Impl {
  ControllerOptions options;
  // Outlives the store: the store's spool thread posts to it until the store has joined it.
  net::EventLoop loop;
  std::unique_ptr<Gatekeeper> gate;
  std::unique_ptr<TaskStore> store;
  std::unique_ptr<EngineIds> engine_ids;
  std::unique_ptr<StoredResults> results;  // its timers run on `loop`; commits at destruction
  auth::LoginRegistry logins;
  std::unique_ptr<auth::CapabilityAdmission> admission;
  std::unique_ptr<Hub> hub;
  std::unique_ptr<net::Listener> listener;
  std::unique_ptr<net::Timer> audit_flush;
  std::unique_ptr<net::Timer> trust_watch;
  int trust_watch_ticks = 0;
  std::unique_ptr<net::Timer> memory_upkeep;
  std::uint64_t completed_at_last_trim = 0;
};

Controller::Controller() : impl_(std::make_unique<Impl>()) {}
Controller::~Controller() = default;

StatusOr<std::unique_ptr<Controller>> Controller::create(const ControllerOptions& options) {
  if (!options.ssh_server.empty()) TESTUDO_RETURN_IF_ERROR(auth::check_ssh_gateway(options.ssh_server, "--ssh-server"));
  if (!options.engine_ssh_server.empty()) {
    TESTUDO_RETURN_IF_ERROR(auth::check_ssh_gateway(options.engine_ssh_server, "--engine-ssh-server"));
  }
  std::unique_ptr<Controller> c(new Controller());
  Impl& impl = *c->impl_;
  impl.options = options;
  raise_open_file_limit();
  ProfilePaths paths = profile_paths(options.profile);
  TESTUDO_RETURN_IF_ERROR(crypto::ensure_private_dir(paths.security_dir));

  PersistentState state;
  if (options.reuse) {
    auto loaded = load_state(paths.controller_state_file);
    if (loaded.ok()) {
      state = std::move(loaded).value();
      LOG_INFO("controller") << "reusing key, certificate and capabilities from " << paths.controller_state_file;
    } else if (loaded.status().code() == StatusCode::kNotFound) {
      TESTUDO_ASSIGN_OR_RETURN(state, fresh_state());
    } else {
      return loaded.status();
    }
  } else {
    TESTUDO_ASSIGN_OR_RETURN(state, fresh_state());
  }
  if (!options.certfile.empty() || !options.keyfile.empty()) {
    TESTUDO_ASSIGN_OR_RETURN(state.identity, load_given_identity(options));
  }
  TESTUDO_ASSIGN_OR_RETURN(impl.gate, make_gatekeeper(options, paths));

  TaskStoreOptions store_options;
  store_options.path = paths.state_dir + "/tasks.sqlite";
  store_options.max_age = options.result_max_age;
  store_options.max_result_bytes = options.result_max_bytes;
  TESTUDO_ASSIGN_OR_RETURN(impl.store,
                           TaskStore::open(store_options, std::chrono::duration_cast<std::chrono::microseconds>(
                                                              std::chrono::system_clock::now().time_since_epoch())
                                                              .count()));
  if (impl.store->lost_at_open() > 0) {
    LOG_WARN("controller") << impl.store->lost_at_open()
                           << " task(s) of the previous run did not finish; they are recorded as lost";
  }

  // Beside the task store, in a file of its own: written once per new engine process and read
  // only with --reuse, while the task store is written every few milliseconds and kept either way.
  TESTUDO_ASSIGN_OR_RETURN(impl.engine_ids, EngineIds::open(paths.state_dir + "/engine-ids.json", options.reuse));
  if (!impl.engine_ids->from_previous_run().empty()) {
    LOG_INFO("controller") << impl.engine_ids->from_previous_run().size()
                           << " engine(s) of the previous run keep their ids if they come back; new engines start at "
                           << impl.engine_ids->next_id();
  }

  HubOptions hub_options;
  auto scheme = parse_scheme(options.scheme);
  if (!scheme) return invalid_argument("unknown scheme '" + options.scheme + "': leastload, lru, twobin, weighted or random");
  hub_options.scheduler.scheme = *scheme;
  if (options.hwm != "auto") {
    std::uint32_t hwm = 0;
    auto [end, ec] = std::from_chars(options.hwm.data(), options.hwm.data() + options.hwm.size(), hwm);
    if (ec != std::errc() || end != options.hwm.data() + options.hwm.size() || hwm == kAdaptiveWindow) {
      return invalid_argument("--hwm '" + options.hwm + "': 'auto' or a number of tasks (0: no limit)");
    }
    hub_options.scheduler.hwm = hwm;
  }
  hub_options.heartbeat_timeout = options.heartbeat_timeout;
  hub_options.hello_timeout = options.hello_timeout;
  hub_options.limits.max_message_bytes = options.max_message_bytes;
  hub_options.queue_limits = {.per_client = options.client_queue_bytes, .total = options.queue_bytes};
  hub_options.relay_from_bytes = options.relay_from_bytes;
  hub_options.client_max_tasks = options.client_max_tasks;
  hub_options.max_tasks = options.max_tasks;
  hub_options.client_reply_queue_bytes = options.client_reply_queue_bytes;
  hub_options.random_seed = std::random_device{}();
  impl.results = std::make_unique<StoredResults>(*impl.store, *impl.gate, impl.loop);
  TESTUDO_RETURN_IF_ERROR(configure_logins(options, impl.logins));
  impl.admission = std::make_unique<auth::CapabilityAdmission>(
      auth::CapabilityAdmission::Capabilities{state.client_capability, state.engine_capability}, *impl.gate,
      &impl.logins);
  impl.hub = std::make_unique<Hub>(
      HubServices{impl.loop, *impl.admission, *impl.gate, *impl.results, *impl.engine_ids, &impl.logins}, hub_options,
      [&impl] { impl.loop.stop(); });
  impl.audit_flush = impl.loop.every(std::chrono::milliseconds(20), [&impl] { impl.gate->flush(); });
  // A changed policy file, trust directory or CRL takes effect within a second; expiry of
  // connected peers' certificates is looked at every half minute.
  impl.trust_watch = impl.loop.every(std::chrono::seconds(1), [&impl] {
    if (impl.gate->reload_if_changed() || ++impl.trust_watch_ticks % 30 == 0) impl.hub->recheck_peers();
  });
  // A burst (100,000 tasks queued at once) leaves glibc holding the freed heap (~1.5 KB per
  // queued task); once the controller is idle again it goes back to the system, so the
  // resident size returns near the idle figure instead of staying at the burst's peak.
  impl.memory_upkeep = impl.loop.every(std::chrono::milliseconds(500), [&impl] {
    const std::uint64_t completed = impl.hub->tasks_completed();
    if (impl.hub->tasks_in_flight() == 0 && completed - impl.completed_at_last_trim >= 10'000) {
      ::malloc_trim(0);
      impl.completed_at_last_trim = completed;
    }
  });

  net::ListenOptions listen;
  listen.host = bind_address(options.ip);
  listen.port = options.port != 0 ? options.port : (options.reuse ? state.port : 0);
  listen.tls.identity = state.identity;
  listen.tls.min_version = options.tls_min_version;
  listen.tls.ciphersuites = options.tls_ciphersuites;
  listen.handshake_timeout = options.hello_timeout;
  Hub* hub = impl.hub.get();
  listen.on_data_connection = [hub](UniqueFd socket, const net::DataHello& hello, const std::string& peer) {
    hub->accept_data(std::move(socket), hello, peer);
  };
  listen.on_handshake_failed = [hub](const std::string& peer, const std::string& reason) {
    hub->connection_refused(peer, reason);
  };
  TESTUDO_ASSIGN_OR_RETURN(impl.listener, listen_when_free(impl.loop, listen, options.port_wait, [hub](auto conn) {
                             hub->accept(std::move(conn));
                           }));
  state.port = impl.listener->port();
  TESTUDO_RETURN_IF_ERROR(save_state(paths.controller_state_file, state));

  TESTUDO_ASSIGN_OR_RETURN(std::string fingerprint, tls::fingerprint_of_pem(state.identity.cert_pem));
  auth::ConnectionInfo info;
  TESTUDO_ASSIGN_OR_RETURN(info.host, connection_address(options.ip, options.location, this_host_name()));
  info.port = state.port;
  info.fingerprint = fingerprint;
  info.role = wire::Role::kClient;
  info.capability = state.client_capability;
  info.ssh = options.ssh_server;
  TESTUDO_RETURN_IF_ERROR(auth::save_connection_file(paths.client_connection_file, info));
  info.role = wire::Role::kEngine;
  info.capability = state.engine_capability;
  info.ssh = options.engine_ssh_server;
  TESTUDO_RETURN_IF_ERROR(auth::save_connection_file(paths.engine_connection_file, info));
  LOG_INFO("controller") << "listening on " << listen.host << ":" << state.port << " (connection files say "
                         << info.host << ":" << state.port << "; TLS " << options.tls_min_version
                         << (options.tls_min_version == "1.3" ? "" : "+") << ", certificate " << fingerprint
                         << "); connection files in " << paths.security_dir << "; trust mode "
                         << trust_mode_name(impl.gate->mode());
  return c;
}

Status Controller::run() {
  Impl& impl = *impl_;
  impl.loop.on_signals({SIGINT, SIGTERM, SIGHUP}, [&impl](int sig) {
    if (sig == SIGHUP) return impl.hub->reload();  // policy, trust directory, CRL; connections stay
    impl.listener->close();
    impl.hub->shutdown(sig == SIGINT ? "SIGINT" : "SIGTERM");
  });
  impl.loop.run();
  impl.listener->close();
  LOG_INFO("controller") << "stopped";
  return ok_status();
}

void Controller::request_stop() {
  Impl* impl = impl_.get();
  impl->loop.post([impl] {
    impl->listener->close();
    impl->hub->shutdown("stop requested");
  });
}

std::uint16_t Controller::port() const { return impl_->listener->port(); }

}  // namespace testudo::controller
