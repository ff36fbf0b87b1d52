// testudo_scale: how many engines one controller holds, and what latency and memory it has
// then. For each N of --engines:
//   1. starts a real controller (`<build>/testudo controller`) in a private TESTUDO_HOME;
//   2. opens N lightweight engine sessions from this process, all on one net::EventLoop:
//      real TLS 1.3 sessions with the engine capability and the profile's shared engine
//      identity (security/engine-*.pem), a signed kEngineInfo after the welcome, heartbeats
//      every second, and an immediate empty kTaskReply to every task (no Python);
//   3. measures with the C++ client (include/testudo/client.h): time until the controller
//      lists all N engines, controller RSS idle (VmRSS), round trips of a trivial
//      load-balanced and a direct request (median, p99), load-balanced throughput, and
//      optionally the controller's RSS after --million finished tasks.
// Prints one JSON object per N on stdout and a readable line per N on stderr.
// The lightweight engines make the numbers the controller's (and the transport's): a real
// engine adds its Python work (~100 us per task, docs/performance.md) and ~23 MB.
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "auth/connection_file.h"
#include "auth/identity.h"
#include "auth/registration.h"
#include "auth/session.h"
#include "base/log.h"
#include "base/profile.h"
#include "net/net.h"
#include "testudo/client.h"
#include "tls/tls.h"
#include "wire/body.h"
#include "wire/reply.h"

namespace {

using namespace testudo;
using Clock = std::chrono::steady_clock;
using wire::MessageKind;
constexpr const char* kProfile = "scale";

struct Flags {
  std::vector<std::size_t> engines{64, 256, 1024};
  std::size_t rounds = 2000;      // round trips per kind
  std::size_t tasks = 10000;      // load-balanced throughput
  std::size_t million = 0;        // finished tasks for the memory figure (0: skip)
  std::size_t million_at = 0;     // ... at this N (default: the first of --engines)
  std::size_t batch = 10000;      // tasks in flight during --million
  std::size_t parallel = 64;      // sessions being opened at once
  std::string testudo;            // the testudo binary (default: <dir of this>/../../testudo)
  std::string hwm;                // passed to the controller if set
  bool keep = false;              // keep the TESTUDO_HOME directories
};

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr,
               "%s\nusage: testudo_scale [--engines 64,256,1024] [--rounds 2000] [--tasks 10000]\n"
               "         [--million 1000000 [--million-at N] [--batch 10000]] [--parallel 64]\n"
               "         [--testudo PATH] [--hwm K] [--keep]\n",
               why);
  std::exit(2);
}

Flags parse_flags(int argc, char** argv) {
  Flags f;
  auto number = [](const std::string& s) -> std::size_t {
    char* end = nullptr;
    unsigned long long v = std::strtoull(s.c_str(), &end, 10);
    if (s.empty() || *end != '\0') usage(("not a number: " + s).c_str());
    return static_cast<std::size_t>(v);
  };
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage((a + " needs a value").c_str());
      return argv[++i];
    };
    if (a == "--engines") {
      f.engines.clear();
      std::stringstream ss(value());
      for (std::string item; std::getline(ss, item, ',');) f.engines.push_back(number(item));
      if (f.engines.empty()) usage("--engines is empty");
    } else if (a == "--rounds") {
      f.rounds = number(value());
    } else if (a == "--tasks") {
      f.tasks = number(value());
    } else if (a == "--million") {
      f.million = number(value());
    } else if (a == "--million-at") {
      f.million_at = number(value());
    } else if (a == "--batch") {
      f.batch = std::max<std::size_t>(1, number(value()));
    } else if (a == "--parallel") {
      f.parallel = std::max<std::size_t>(1, number(value()));
    } else if (a == "--testudo") {
      f.testudo = value();
    } else if (a == "--hwm") {
      f.hwm = std::to_string(number(value()));
    } else if (a == "--keep") {
      f.keep = true;
    } else if (a == "-h" || a == "--help") {
      usage("testudo_scale: lightweight engines against one real controller");
    } else {
      usage(("unknown argument " + a).c_str());
    }
  }
  if (f.million_at == 0) f.million_at = f.engines.front();
  if (f.testudo.empty()) {
    std::error_code ec;
    auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
    f.testudo = (self.parent_path() / ".." / ".." / "testudo").lexically_normal().string();
  }
  return f;
}

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::uint64_t now_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// VmRSS of `pid` in bytes (0 if unreadable).
std::uint64_t rss_bytes(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(f, line);) {
    if (line.rfind("VmRSS:", 0) == 0) return std::strtoull(line.c_str() + 6, nullptr, 10) * 1024;
  }
  return 0;
}

// User + system CPU seconds `pid` has used (0 if unreadable): fields 14 and 15 of /proc/<pid>/stat.
double cpu_seconds(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  auto paren = text.rfind(')');
  if (paren == std::string::npos) return 0;
  std::istringstream rest(text.substr(paren + 2));  // from field 3 (state) on
  std::string field;
  unsigned long long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && rest >> field; ++i) {
    if (i == 14) utime = std::strtoull(field.c_str(), nullptr, 10);
    if (i == 15) stime = std::strtoull(field.c_str(), nullptr, 10);
  }
  return static_cast<double>(utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

// CPU seconds of this process (the lightweight engines and the client).
double own_cpu_seconds() {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  auto sec = [](const timeval& tv) { return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) / 1e6; };
  return sec(ru.ru_utime) + sec(ru.ru_stime);
}

double mb(std::uint64_t bytes) { return static_cast<double>(bytes) / 1e6; }

// Open file descriptors the process may hold: raised to the hard limit.
rlim_t raise_nofile() {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return 0;
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
  }
  ::getrlimit(RLIMIT_NOFILE, &rl);
  return rl.rlim_cur;
}

nlohmann::json summary_us(std::vector<double> v) {
  if (v.empty()) return nullptr;
  std::sort(v.begin(), v.end());
  auto at = [&](double q) {
    std::size_t i = static_cast<std::size_t>(std::ceil(q * static_cast<double>(v.size()))) - 1;
    return v[std::min(i, v.size() - 1)];
  };
  double sum = 0;
  for (double x : v) sum += x;
  return {{"median", v[v.size() / 2]}, {"p99", at(0.99)}, {"mean", sum / static_cast<double>(v.size())},
          {"min", v.front()}, {"max", v.back()}, {"n", v.size()}};
}

// ----- the controller, a child process ------------------------------------------------------

struct ControllerProcess {
  pid_t pid = -1;
  std::string log;
};

StatusOr<ControllerProcess> start_controller(const Flags& flags, const std::string& home) {
  ControllerProcess c;
  c.log = home + "/controller.log";
  std::vector<std::string> args{flags.testudo, "controller", "--profile", kProfile, "--log-file", c.log};
  if (!flags.hwm.empty()) {
    args.push_back("--hwm");
    args.push_back(flags.hwm);
  }
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) return unavailable("fork failed");
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);  // no controller left behind if this benchmark is killed
    int null = ::open("/dev/null", O_RDWR);
    if (null >= 0) {
      ::dup2(null, 0);
      ::dup2(null, 1);
    }
    ::execv(argv[0], argv.data());
    std::fprintf(stderr, "cannot run %s\n", argv[0]);
    std::_Exit(127);
  }
  c.pid = pid;
  // Ready once both connection files are written (the last thing Controller::create does).
  const ProfilePaths paths = profile_paths(kProfile);
  auto deadline = Clock::now() + std::chrono::seconds(20);
  while (Clock::now() < deadline) {
    int st = 0;
    if (::waitpid(pid, &st, WNOHANG) == pid) {
      return unavailable("the controller exited during start-up; see " + c.log);
    }
    if (std::filesystem::exists(paths.client_connection_file) && std::filesystem::exists(paths.engine_connection_file)) {
      return c;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  return deadline_exceeded("the controller did not write its connection files in 20 s; see " + c.log);
}

void stop_controller(ControllerProcess& c, std::chrono::seconds grace) {
  if (c.pid <= 0) return;
  auto deadline = Clock::now() + grace;
  bool sent_term = false;
  for (;;) {
    int st = 0;
    if (::waitpid(c.pid, &st, WNOHANG) == c.pid) break;
    if (Clock::now() > deadline) {
      if (sent_term) {
        ::kill(c.pid, SIGKILL);
        ::waitpid(c.pid, nullptr, 0);
        break;
      }
      ::kill(c.pid, SIGTERM);
      sent_term = true;
      deadline = Clock::now() + std::chrono::seconds(5);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  c.pid = -1;
}

// ----- lightweight engines -------------------------------------------------------------------

// N engine sessions on one event loop (its own thread). Every task gets an immediate, valid,
// empty reply. Thread-safety: open()/stop() from one outside thread; the rest on the loop.
class LightEngines {
 public:
  LightEngines(auth::ConnectionInfo controller, tls::KeyAndCertificate identity)
      : controller_(std::move(controller)), identity_(std::move(identity)) {
    thread_ = std::thread([this] { loop_.run(); });
    loop_.post([this] {
      heartbeat_ = loop_.every(std::chrono::milliseconds(1000), [this] { beat(); });
    });
  }
  ~LightEngines() { stop(); }

  // Opens `n` sessions, at most `parallel` handshakes at once; returns when every one has
  // been welcomed and has sent its signed engine info, or the first failure.
  Status open(std::size_t n, std::size_t parallel) {
    {
      std::lock_guard lock(mutex_);
      target_ = n;
      parallel_ = parallel;
    }
    loop_.post([this] { launch_more(); });
    std::unique_lock lock(mutex_);
    done_.wait(lock, [this] { return opened_ + failed_ >= target_; });
    if (failed_ > 0) return unavailable(std::to_string(failed_) + " of " + std::to_string(target_) +
                                        " sessions failed; first: " + first_error_);
    return ok_status();
  }

  std::uint64_t tasks_answered() const { return answered_.load(); }
  std::uint64_t closed() const { return closed_.load(); }
  std::string first_close_reason() {
    std::lock_guard lock(mutex_);
    return first_close_;
  }

  void stop() {
    if (!thread_.joinable()) return;
    loop_.post([this] {
      heartbeat_.reset();
      stopping_ = true;
      for (auto& c : connections_) {
        if (c && c->is_open()) c->close(unavailable("benchmark done"));
      }
      connections_.clear();
      loop_.stop();
    });
    thread_.join();
  }

 private:
  void launch_more() {
    std::size_t target, parallel;
    {
      std::lock_guard lock(mutex_);
      target = target_;
      parallel = parallel_;
    }
    while (in_flight_ < parallel && next_ < target) {
      const std::size_t index = next_++;
      ++in_flight_;
      auth::SessionOptions so;
      so.controller = controller_;
      so.identity = identity_;
      so.instance = "scale-" + std::to_string(::getpid()) + "-" + std::to_string(index);
      so.timeout = std::chrono::milliseconds(60'000);
      auth::open_session(loop_, so, [this](StatusOr<auth::Session> s) { on_session(std::move(s)); });
    }
  }

  void on_session(StatusOr<auth::Session> s) {
    --in_flight_;
    if (stopping_) {
      if (s.ok()) s->connection->close(unavailable("stopping"));
      return;
    }
    if (!s.ok()) return finish_one(s.status());
    std::shared_ptr<net::Connection> conn = s->connection;
    // Tags and host facts, signed by the engine key over this session (auth/registration.h).
    const std::string info_json =
        nlohmann::json{{"hostname", "scale"}, {"light", true}, {"pid", ::getpid()}, {"slot", connections_.size()}}.dump();
    auto exporter =
        conn->export_keying_material(auth::kRegistrationExporterLabel, auth::kRegistrationExporterContext);
    if (!exporter.ok()) return finish_one(exporter.status());
    auto signature = tls::sign_sha256(identity_.key_pem, auth::registration_signed_bytes(*exporter, info_json));
    if (!signature.ok()) return finish_one(signature.status());
    wire::Message info;
    info.envelope.kind = MessageKind::kEngineInfo;
    info.envelope.text = info_json;
    info.segments.push_back(SharedBytes::copy_of(*signature));
    conn->send(std::move(info));
    std::weak_ptr<net::Connection> weak = conn;
    conn->set_handlers({
        [this, weak](wire::Message&& m) {
          if (auto c = weak.lock()) on_message(*c, std::move(m));
        },
        [this](const Status& why) {
          if (closed_.fetch_add(1) == 0) {
            std::lock_guard lock(mutex_);
            first_close_ = why.message();
          }
        },
    });
    connections_.push_back(std::move(conn));
    finish_one(ok_status());
  }

  void finish_one(const Status& st) {
    {
      std::lock_guard lock(mutex_);
      if (st.ok()) {
        ++opened_;
      } else {
        if (failed_++ == 0) first_error_ = st.message();
      }
    }
    done_.notify_all();
    launch_more();
  }

  void on_message(net::Connection& conn, wire::Message&& m) {
    switch (m.envelope.kind) {
      case MessageKind::kExecute:
      case MessageKind::kApply:
      case MessageKind::kPush:
      case MessageKind::kPull: {
        wire::ReplyMeta meta;
        meta.started_us = meta.completed_us = now_us();
        std::vector<SharedBytes> body;
        body.reserve(wire::kReplyFixedSegments);
        body.push_back(wire::encode_reply_meta(meta));
        body.push_back(SharedBytes::copy_of(std::string_view()));
        body.push_back(SharedBytes::copy_of(std::string_view()));
        conn.send(wire::task_reply(Outcome::kOk, {.task_id = m.envelope.task_id, .engine_id = m.envelope.engine_id}, {},
                                   std::move(body)));
        answered_.fetch_add(1, std::memory_order_relaxed);
        return;
      }
      case MessageKind::kEngineShutdown:
        conn.close_after_flush(ok_status(), std::chrono::milliseconds(500));
        return;
      default:  // heartbeat acks, interrupts: nothing to do
        return;
    }
  }

  void beat() {
    for (auto& c : connections_) {
      if (!c->is_open()) continue;
      wire::Message hb;
      hb.envelope.kind = MessageKind::kHeartbeat;
      c->send(std::move(hb));
    }
  }

  const auth::ConnectionInfo controller_;
  const tls::KeyAndCertificate identity_;
  net::EventLoop loop_;
  std::thread thread_;
  // Loop thread only.
  std::vector<std::shared_ptr<net::Connection>> connections_;
  std::unique_ptr<net::Timer> heartbeat_;
  std::size_t next_ = 0;
  std::size_t in_flight_ = 0;
  bool stopping_ = false;
  std::atomic<std::uint64_t> answered_{0};
  std::atomic<std::uint64_t> closed_{0};
  // Shared with the caller of open().
  std::mutex mutex_;
  std::condition_variable done_;
  std::size_t target_ = 0;
  std::size_t parallel_ = 1;
  std::size_t opened_ = 0;
  std::size_t failed_ = 0;
  std::string first_error_;
  std::string first_close_;
};

// ----- measurements --------------------------------------------------------------------------

constexpr auto kWait = std::chrono::seconds(60);

Status check(const StatusOr<std::vector<EngineReply>>& r) {
  if (!r.ok()) return r.status();
  for (const auto& reply : *r) {
    if (!reply.status.ok()) return reply.status;
  }
  return ok_status();
}

StatusOr<std::vector<double>> round_trips(Client& client, const std::vector<EngineId>& direct, std::size_t rounds) {
  std::vector<double> us;
  us.reserve(rounds);
  for (std::size_t i = 0; i < rounds + 50; ++i) {  // 50 warm-up calls
    auto t0 = Clock::now();
    AsyncResult r = direct.empty() ? client.execute_balanced({}, "pass") : client.execute(direct, "pass");
    auto replies = r.get(kWait);
    const double dt = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
    if (Status st = check(replies); !st.ok()) return st;
    if (i >= 50) us.push_back(dt);
  }
  return us;
}

// Submits `n` load-balanced trivial tasks at once and waits for all; returns (tasks/s, engines used).
StatusOr<std::pair<double, std::size_t>> throughput(Client& client, std::size_t n) {
  std::vector<AsyncResult> pending;
  pending.reserve(n);
  auto t0 = Clock::now();
  for (std::size_t i = 0; i < n; ++i) pending.push_back(client.execute_balanced({}, "pass"));
  std::set<EngineId> used;
  for (auto& r : pending) {
    auto replies = r.get(kWait);
    if (Status st = check(replies); !st.ok()) return st;
    used.insert((*replies)[0].engine_id);
  }
  return std::make_pair(static_cast<double>(n) / seconds_since(t0), used.size());
}

StatusOr<nlohmann::json> million_tasks(Client& client, pid_t controller, const Flags& flags) {
  nlohmann::json out;
  out["tasks"] = flags.million;
  out["batch"] = flags.batch;
  out["rss_before_mb"] = mb(rss_bytes(controller));
  auto t0 = Clock::now();
  std::size_t done = 0, next_report = 100'000;
  while (done < flags.million) {
    const std::size_t k = std::min(flags.batch, flags.million - done);
    std::vector<AsyncResult> batch;
    batch.reserve(k);
    for (std::size_t i = 0; i < k; ++i) batch.push_back(client.execute_balanced({}, "pass"));
    for (auto& r : batch) {
      if (Status st = check(r.get(kWait)); !st.ok()) return st;
    }
    done += k;
    if (done >= next_report) {
      std::fprintf(stderr, "    %zu tasks, controller RSS %.1f MB, %.0f tasks/s\n", done, mb(rss_bytes(controller)),
                   static_cast<double>(done) / seconds_since(t0));
      next_report += 100'000;
    }
  }
  const double elapsed = seconds_since(t0);
  out["seconds"] = elapsed;
  out["tasks_per_s"] = static_cast<double>(flags.million) / elapsed;
  out["rss_after_mb"] = mb(rss_bytes(controller));
  std::this_thread::sleep_for(std::chrono::seconds(1));
  out["rss_after_1s_mb"] = mb(rss_bytes(controller));
  auto purged = client.purge_results({});
  if (purged.ok()) {
    out["purged"] = *purged;
    std::this_thread::sleep_for(std::chrono::seconds(1));
    out["rss_after_purge_mb"] = mb(rss_bytes(controller));
  } else {
    out["purge_error"] = purged.status().message();
  }
  return out;
}

StatusOr<nlohmann::json> run_one(const Flags& flags, std::size_t n) {
  char tmpl[] = "/tmp/testudo-scale-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) return unavailable("mkdtemp failed");
  const std::string home = tmpl;
  ::setenv("TESTUDO_HOME", home.c_str(), 1);
  nlohmann::json out;
  out["engines"] = n;

  TESTUDO_ASSIGN_OR_RETURN(ControllerProcess controller, start_controller(flags, home));
  struct Cleanup {
    ControllerProcess& c;
    std::string home;
    bool keep;
    ~Cleanup() {
      stop_controller(c, std::chrono::seconds(10));
      std::error_code ec;
      if (!keep) std::filesystem::remove_all(home, ec);
    }
  } cleanup{controller, home, flags.keep};
  out["controller_pid"] = controller.pid;
  out["controller_rss_start_mb"] = mb(rss_bytes(controller.pid));

  const ProfilePaths paths = profile_paths(kProfile);
  TESTUDO_ASSIGN_OR_RETURN(auth::ConnectionInfo engine_file,
                           auth::load_connection_file(paths.engine_connection_file, wire::Role::kEngine));
  TESTUDO_ASSIGN_OR_RETURN(tls::KeyAndCertificate identity, auth::load_identity(paths.security_dir, "engine"));
  ClientOptions co;
  co.profile = kProfile;
  co.request_timeout = std::chrono::milliseconds(60'000);
  TESTUDO_ASSIGN_OR_RETURN(std::unique_ptr<Client> client, Client::connect(co));

  // Registration: first dial to the controller listing all N engines.
  LightEngines engines(engine_file, identity);
  const double cpu0 = cpu_seconds(controller.pid);
  const double own0 = own_cpu_seconds();
  auto t0 = Clock::now();
  TESTUDO_RETURN_IF_ERROR(engines.open(n, flags.parallel));
  out["welcomed_s"] = seconds_since(t0);
  std::vector<EngineId> ids;
  for (;;) {
    TESTUDO_ASSIGN_OR_RETURN(ids, client->engine_ids());
    if (ids.size() >= n) break;
    if (seconds_since(t0) > 120) return deadline_exceeded("only " + std::to_string(ids.size()) + " engines after 120 s");
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  out["register_s"] = seconds_since(t0);
  // CPU time says more than wall time on a shared machine.
  out["controller_cpu_ms_per_registration"] = (cpu_seconds(controller.pid) - cpu0) * 1e3 / static_cast<double>(n);
  out["engines_cpu_ms_per_registration"] = (own_cpu_seconds() - own0) * 1e3 / static_cast<double>(n);
  std::this_thread::sleep_for(std::chrono::seconds(1));
  out["controller_rss_idle_mb"] = mb(rss_bytes(controller.pid));
  out["controller_rss_idle_bytes"] = rss_bytes(controller.pid);

  TESTUDO_ASSIGN_OR_RETURN(auto lb, round_trips(*client, {}, flags.rounds));
  out["lb_rt_us"] = summary_us(std::move(lb));
  TESTUDO_ASSIGN_OR_RETURN(auto direct, round_trips(*client, {ids[ids.size() / 2]}, flags.rounds));
  out["direct_rt_us"] = summary_us(std::move(direct));
  const double cpu1 = cpu_seconds(controller.pid);
  TESTUDO_ASSIGN_OR_RETURN(auto tput, throughput(*client, flags.tasks));
  out["controller_cpu_us_per_lb_task"] = (cpu_seconds(controller.pid) - cpu1) * 1e6 / static_cast<double>(flags.tasks);
  out["lb_tasks"] = flags.tasks;
  out["lb_tput_tasks_per_s"] = tput.first;
  out["lb_tput_engines_used"] = tput.second;
  std::this_thread::sleep_for(std::chrono::seconds(1));
  out["controller_rss_after_mb"] = mb(rss_bytes(controller.pid));

  if (flags.million > 0 && n == flags.million_at) {
    TESTUDO_ASSIGN_OR_RETURN(out["million"], million_tasks(*client, controller.pid, flags));
  }

  // Every engine must still be there: none cut off for missing heartbeats or registration.
  TESTUDO_ASSIGN_OR_RETURN(ids, client->engine_ids());
  out["engines_at_end"] = ids.size();
  out["engine_sessions_closed"] = engines.closed();
  if (engines.closed() > 0) out["first_close_reason"] = engines.first_close_reason();
  out["tasks_answered"] = engines.tasks_answered();

  (void)client->shutdown_cluster();
  client.reset();
  stop_controller(controller, std::chrono::seconds(10));
  engines.stop();
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  Flags flags = parse_flags(argc, argv);
  log::set_min_level(log::Level::kWarning);
  ::signal(SIGPIPE, SIG_IGN);
  if (::access(flags.testudo.c_str(), X_OK) != 0) {
    std::fprintf(stderr, "testudo_scale: %s is not executable (build the `testudo` target, or pass --testudo)\n",
                 flags.testudo.c_str());
    return 2;
  }
  const rlim_t nofile = raise_nofile();
  const std::size_t most = *std::max_element(flags.engines.begin(), flags.engines.end());
  if (nofile < most + 64) {
    std::fprintf(stderr, "testudo_scale: %zu engines need ~%zu open files, the limit is %llu\n", most, most + 64,
                 static_cast<unsigned long long>(nofile));
    return 2;
  }
  int rc = 0;
  for (std::size_t n : flags.engines) {
    auto r = run_one(flags, n);
    if (!r.ok()) {
      std::fprintf(stderr, "testudo_scale: %zu engines: %s\n", n, r.status().message().c_str());
      std::printf("%s\n", nlohmann::json{{"engines", n}, {"error", r.status().message()}}.dump().c_str());
      std::fflush(stdout);
      rc = 1;
      continue;
    }
    nlohmann::json& j = *r;
    j["nofile_limit"] = nofile;
    std::printf("%s\n", j.dump().c_str());
    std::fflush(stdout);
    std::fprintf(stderr,
                 "%5zu engines: registered in %.3f s; controller RSS %.1f MB idle, %.1f MB after; "
                 "round trip load-balanced %.0f / %.0f us, direct %.0f / %.0f us (median / p99); "
                 "%.0f tasks/s load-balanced over %zu engines; controller CPU %.2f ms per registration, "
                 "%.0f us per task\n",
                 n, j["register_s"].get<double>(), j["controller_rss_idle_mb"].get<double>(),
                 j["controller_rss_after_mb"].get<double>(), j["lb_rt_us"]["median"].get<double>(),
                 j["lb_rt_us"]["p99"].get<double>(), j["direct_rt_us"]["median"].get<double>(),
                 j["direct_rt_us"]["p99"].get<double>(), j["lb_tput_tasks_per_s"].get<double>(),
                 j["lb_tput_engines_used"].get<std::size_t>(), j["controller_cpu_ms_per_registration"].get<double>(),
                 j["controller_cpu_us_per_lb_task"].get<double>());
    if (j.contains("million")) {
      const auto& m = j["million"];
      std::fprintf(stderr, "       %zu finished tasks: controller RSS %.1f MB (%.1f MB before), %.0f tasks/s\n",
                   m["tasks"].get<std::size_t>(), m["rss_after_mb"].get<double>(), m["rss_before_mb"].get<double>(),
                   m["tasks_per_s"].get<double>());
    }
  }
  return rc;
}
