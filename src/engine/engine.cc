#include "engine/engine.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <deque>
#include <future>
#include <list>
#include <map>
#include <optional>
#include <mutex>
#include <thread>
#include <variant>

#include "auth/identity.h"
#include "auth/registration.h"
#include "auth/link.h"
#include "base/profile.h"
#include "base/log.h"
#include "crypto/crypto.h"
#include "engine/python_runtime.h"
#include "engine/sealed_pairs.h"
#include "net/net.h"
#include "wire/body.h"
#include "wire/reply.h"

#include <nlohmann/json.hpp>

namespace testudo::engine {
namespace {

using wire::MessageKind;

std::uint64_t now_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

TaskOutcome protocol_error(std::string what) {
  TaskOutcome out;
  out.ok = false;
  out.ename = "ProtocolError";
  out.evalue = std::move(what);
  return out;
}

// Runs one routed request. Malformed bodies become an error reply, never a crash.
TaskOutcome run_request(PythonRuntime& rt, const wire::Message& m) {
  const auto& segs = m.segments;
  const bool literal = m.envelope.value_format() == wire::ValueFormat::kLiteral;
  switch (m.envelope.kind) {
    case MessageKind::kExecute:
      if (segs.size() != 1) return protocol_error("execute needs exactly one segment (the code)");
      return rt.execute(segs[0].view(), m.envelope.display_result());
    case MessageKind::kPush: {
      if (segs.empty()) return protocol_error("push without a body");
      if (!literal) return rt.push_pickled(segs);
      auto pairs = wire::decode_literal_pairs(segs[0]);
      if (!pairs.ok()) return protocol_error(pairs.status().message());
      return rt.push_literals(*pairs);
    }
    case MessageKind::kPull: {
      if (segs.size() != 1) return protocol_error("pull needs exactly one segment (the names)");
      auto names = wire::decode_names(segs[0]);
      if (!names.ok()) return protocol_error(names.status().message());
      return literal ? rt.pull_repr(*names) : rt.pull_pickled(*names);
    }
    case MessageKind::kApply:
      if (segs.empty()) return protocol_error("apply without a body");
      return rt.apply(segs);
    default:
      return protocol_error("not a task: " + std::string(wire::kind_name(m.envelope.kind)));
  }
}

// Tags as JSON: user labels (values parsed as JSON literals where they are one) and host facts.
StatusOr<std::string> engine_info(const std::vector<std::pair<std::string, std::string>>& tags) {
  nlohmann::json info = nlohmann::json::object();
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  info["hostname"] = host;
  info["cores"] = std::thread::hardware_concurrency();
  info["memory"] = static_cast<std::uint64_t>(::sysconf(_SC_PHYS_PAGES)) * static_cast<std::uint64_t>(::sysconf(_SC_PAGE_SIZE));
  info["pid"] = ::getpid();
  // Restarted by its supervisor (testudo-engine --restart): how many engines died before it.
  if (const char* restarts = std::getenv("TESTUDO_ENGINE_RESTARTS")) {
    info["restarts"] = std::strtol(restarts, nullptr, 10);
    info["supervisor_pid"] = ::getppid();  // the process a launcher started and tracks
  }
  // Started by mpiexec (the mpi launcher): the rank and size, so user code and rc.select can
  // tell ranks apart. Open MPI, PMIx and MPICH (PMI) name them differently.
  for (const auto& [rank_var, size_var] : {std::pair{"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"},
                                           std::pair{"PMIX_RANK", "PMIX_SIZE"}, std::pair{"PMI_RANK", "PMI_SIZE"}}) {
    const char* rank = std::getenv(rank_var);
    const char* size = std::getenv(size_var);
    if (rank == nullptr) continue;
    info["mpi_rank"] = std::strtol(rank, nullptr, 10);
    if (size != nullptr) info["mpi_size"] = std::strtol(size, nullptr, 10);
    break;
  }
  for (const auto& [key, value] : tags) {
    if (key.empty() || key.size() > 64) return invalid_argument("tag names are 1 to 64 characters: '" + key + "'");
    auto parsed = nlohmann::json::parse(value, nullptr, /*allow_exceptions=*/false);
    info[key] = parsed.is_discarded() || parsed.is_structured() ? nlohmann::json(value) : parsed;
  }
  return info.dump();
}

}  // namespace

struct Engine::Impl {
  EngineOptions options;
  auth::ConnectionInfo controller;
  std::string instance;
  tls::KeyAndCertificate identity;  // presented to the controller on every (re)connection
  std::string engine_info_json;  // tags and host facts, sent after every welcome
  std::unique_ptr<PythonRuntime> runtime;
  SealedPairs sealed;  // the Python thread's (see SealedPairs)
  std::uint32_t python_engine_id = wire::kAnyEngine;  // the Python thread's copy of engine_id

  // --- network thread state (touched only on the loop's thread) ---
  net::EventLoop loop;
  // The controller connection: redials, heartbeats, the signed registration after every
  // welcome. Declared after `loop`: destroyed before it.
  std::unique_ptr<auth::ControllerLink> link;
  std::int64_t engine_id = -1;
  std::unique_ptr<net::Timer> exit_watchdog;
  bool stopping = false;

  // --- the Python thread's way to the connection ---
  // Replies skip the loop when the connection is idle: the Python thread writes them itself
  // through link->current_connection() (Connection::send_now). posted_sends counts the
  // messages it posted to the loop that are not sent yet; while any is pending, replies are
  // posted too, so they never overtake them (e.g. live output).
  std::atomic<int> posted_sends{0};

  // --- the work queue between the two threads ---
  struct SetId { std::int64_t id; };
  struct Stop { Status why; };
  struct ReleaseBuffers {};  // sent result buffers wait for the GIL to be released
  // A bulk request (wire/message.h, flags bit 13): its part [seal header, transfer sizes,
  // ticket], and its sealed body, fetched on a data connection from the moment it arrived
  // (the client dials at the same time; the controller pairs the two promptly).
  using BodyFetch = std::future<StatusOr<std::vector<SharedBytes>>>;
  struct BulkTask {
    wire::Message message;
    BodyFetch body;
  };
  using Work = std::variant<wire::Message, SetId, Stop, ReleaseBuffers, BulkTask>;
  static const wire::Message* task_of(const Work& w) {
    if (const auto* m = std::get_if<wire::Message>(&w)) return m;
    if (const auto* b = std::get_if<BulkTask>(&w)) return &b->message;
    return nullptr;
  }
  std::mutex mutex;
  std::condition_variable ready;
  std::deque<Work> work;  // guarded by mutex

  // The task the Python thread runs now (0: none). The network thread interrupts only while
  // it is set, under the lock, so an interrupt never lands on a later task (and one that
  // arrives as a task ends is cleared by the runtime before the next one starts).
  std::mutex running_mutex;
  std::uint64_t running_task = 0;  // guarded by running_mutex
  // The running request's pair key and sequence number when it was sealed: its live output
  // is sealed too. Read by on_output on the Python thread.
  std::optional<SealedPairs::Opened> running_sealed;  // Python thread only
  std::uint64_t interrupt_before_start = 0;  // guarded by running_mutex

  void push_work(Work w) {
    {
      std::lock_guard lock(mutex);
      work.push_back(std::move(w));
    }
    ready.notify_one();
  }

  // ---------- network thread ----------

  auth::LinkHooks link_hooks() {
    return {
        .on_welcome = [this](net::Connection& c, std::uint32_t) { return send_registration(c); },
        .on_connected = [this](std::uint32_t id) { on_connected(id); },
        .on_message = [this](wire::Message&& m) { on_message(std::move(m)); },
        .on_lost = [this](const Status& why) { on_lost(why); },
        .on_stopped = [this](const Status& why) {
          LOG_ERROR("engine") << why.message();
          stop(why);
        },
    };
  }

  // Tags and host facts, signed by this engine's key over this session (auth/registration.h).
  Status send_registration(net::Connection& c) {
    auto exporter = c.export_keying_material(auth::kRegistrationExporterLabel, auth::kRegistrationExporterContext);
    auto signature = exporter.ok() ? tls::sign_sha256(identity.key_pem,
                                                      auth::registration_signed_bytes(*exporter, engine_info_json))
                                   : StatusOr<std::string>(exporter.status());
    if (!signature.ok()) {
      LOG_ERROR("engine") << "cannot sign the registration data: " << signature.status().message();
      return signature.status();
    }
    wire::Message info;
    info.envelope.kind = MessageKind::kEngineInfo;
    info.envelope.text = engine_info_json;
    info.segments.push_back(SharedBytes::copy_of(*signature));
    info.segments.push_back(SharedBytes::copy_of(sealed.statement()));
    c.send(std::move(info));
    return ok_status();
  }

  void on_connected(std::uint32_t id) {
    if (engine_id != id) {
      engine_id = id;
      push_work(SetId{engine_id});
    }
    LOG_INFO("engine") << "registered as engine " << engine_id << " with " << controller.host << ":" << controller.port;
  }

  void on_message(wire::Message&& m) {
    switch (m.envelope.kind) {
      case MessageKind::kEngineShutdown:
        LOG_INFO("engine") << "controller asked this engine to shut down";
        return stop(ok_status());
      case MessageKind::kEngineInterrupt: {
        std::lock_guard lock(running_mutex);
        if (running_task != 0 && running_task == m.envelope.task_id) {
          LOG_INFO("engine") << "interrupting task " << running_task;
          runtime->interrupt();
        } else if (m.envelope.task_id > running_task) {
          // Sent but not started yet: it is interrupted the moment it would start.
          interrupt_before_start = m.envelope.task_id;
        }
        return;
      }
      case MessageKind::kEngineAbort:
        return abort_queued(m.envelope.task_id, m.envelope.engine_id);
      case MessageKind::kBulkTicket:
        return send_bulk_reply(std::move(m));
      case MessageKind::kExecute:
      case MessageKind::kPush:
      case MessageKind::kPull:
      case MessageKind::kApply:
        if (m.envelope.bulk()) return push_work(fetch_body(std::move(m)));
        return push_work(std::move(m));
      default:
        LOG_WARN("engine") << "ignoring '" << wire::kind_name(m.envelope.kind) << "' from the controller";
    }
  }

  // Starts fetching a bulk request's sealed body on a data connection (a thread of its own,
  // holding only what it needs). A malformed part fails at the fetch, and the task with it.
  BulkTask fetch_body(wire::Message m) {
    auto promise = std::make_shared<std::promise<StatusOr<std::vector<SharedBytes>>>>();
    BulkTask task{std::move(m), promise->get_future()};
    const auto& segments = task.message.segments;
    const auto ticket = segments.size() == 3 ? net::ticket_in(segments[2]) : std::nullopt;
    auto sizes = ticket ? net::decode_transfer_sizes(segments[1].span(), wire::Limits{}.max_segments,
                                                     link->max_message_bytes())
                        : StatusOr<std::vector<std::uint64_t>>(data_loss("a malformed bulk request"));
    if (!sizes.ok()) {
      promise->set_value(sizes.status());
      return task;
    }
    std::thread([host = controller.host, port = controller.port, hello = net::DataHello{net::DataRole::kReceiver, *ticket},
                 sizes = std::move(sizes).value(), promise, timeout = options.controller_timeout] {
      promise->set_value(net::receive_transfer(host, port, hello, sizes, timeout));
    }).detach();
    return task;
  }

  // A bulk part's GCM tag comes after its ciphertext on the data connection (the client seals
  // as it sends, client/bulk_split.h): it goes back into the seal header (m.segments[0],
  // whose tag is all zero until then), and the ciphertext segments are returned. Anything
  // else is a malformed part, refused before anything is opened.
  static StatusOr<std::vector<SharedBytes>> with_trailing_tag(wire::Message& m, std::vector<SharedBytes> body) {
    if (m.segments.empty() || body.empty() || body.back().size() != crypto::kAeadTagBytes) {
      return data_loss("a bulk body without its tag");
    }
    TESTUDO_ASSIGN_OR_RETURN(e2e::SealHeader header, e2e::decode_seal_header(m.segments[0].span()));
    if (header.tag != crypto::AeadTag{}) return data_loss("a bulk body with a tag in its seal header as well");
    std::copy_n(body.back().data(), crypto::kAeadTagBytes, header.tag.begin());
    body.pop_back();
    m.segments[0] = e2e::encode_seal_header(header);
    return body;
  }

  // Bulk replies: a sealed result of this many bytes or more is offered to the controller as
  // [seal header, transfer sizes] and held here until it answers with a data-connection ticket
  // (the ciphertext then goes into the task store's file) or with none (sent whole). The
  // same size from which the controller spools a reply to its file anyway.
  static constexpr std::uint64_t kBulkReplyFromBytes = 16u << 20;
  static constexpr std::chrono::seconds kBulkReplyHold{120};
  struct HeldReply {
    wire::Message whole;
    std::chrono::steady_clock::time_point since;
  };
  std::mutex bulk_mutex;
  std::map<std::uint64_t, HeldReply> bulk_replies;  // by task id; guarded by bulk_mutex

  // Python thread: offers `reply` (sealed, [seal header, ciphertext...]) in bulk if it is large.
  bool offer_in_bulk(wire::Message& reply) {
    std::uint64_t bytes = 0;
    std::vector<std::uint64_t> sizes;
    for (std::size_t i = 1; i < reply.segments.size(); ++i) {
      bytes += reply.segments[i].size();
      sizes.push_back(reply.segments[i].size());
    }
    if (reply.segments.size() < 2 || bytes < kBulkReplyFromBytes) return false;
    wire::Message offer;
    offer.envelope = reply.envelope;
    offer.envelope.set_bulk(true);
    offer.segments = {reply.segments[0], net::encode_transfer_sizes(sizes)};
    {
      std::lock_guard lock(bulk_mutex);
      // A controller that never answers (it lost the task) must not make us hold results.
      const auto now = std::chrono::steady_clock::now();
      std::erase_if(bulk_replies, [now](const auto& held) { return now - held.second.since > kBulkReplyHold; });
      bulk_replies[reply.envelope.task_id] = {std::move(reply), now};
    }
    send_from_python(std::move(offer));
    return true;
  }

  // Network thread: the controller's answer to a bulk reply.
  void send_bulk_reply(wire::Message ticket) {
    HeldReply held;
    {
      std::lock_guard lock(bulk_mutex);
      auto found = bulk_replies.find(ticket.envelope.task_id);
      if (found == bulk_replies.end()) return;
      held = std::move(found->second);
      bulk_replies.erase(found);
    }
    if (ticket.segments.empty()) return send_reply(std::move(held.whole));  // wanted whole after all
    const auto t = ticket.segments.size() == 1 ? net::ticket_in(ticket.segments[0]) : std::nullopt;
    if (!t) {
      LOG_WARN("engine") << "a malformed data-connection ticket for task " << ticket.envelope.task_id;
      return;
    }
    std::vector<SharedBytes> body(std::make_move_iterator(held.whole.segments.begin() + 1),
                                  std::make_move_iterator(held.whole.segments.end()));
    std::thread([host = controller.host, port = controller.port, hello = net::DataHello{net::DataRole::kSender, *t},
                 body = std::move(body), task = ticket.envelope.task_id, timeout = options.controller_timeout] {
      const Status sent = net::send_transfer(host, port, hello, body, timeout);
      if (!sent.ok()) LOG_WARN("engine") << "the result of task " << task << " was not sent: " << sent.message();
    }).detach();
  }

  // Drops task `id` if it waits in the work queue, answering it as aborted; one that runs or
  // ran already goes on (the controller then gets its real reply).
  void abort_queued(std::uint64_t id, std::uint32_t engine) {
    bool dropped = false;
    {
      std::lock_guard lock(mutex);
      auto queued = std::find_if(work.begin(), work.end(), [id](const Work& w) {
        const wire::Message* m = task_of(w);
        return m && m->envelope.task_id == id;
      });
      if (queued != work.end()) {
        work.erase(queued);
        dropped = true;
      }
    }
    if (dropped) send_reply(wire::task_reply(Outcome::kAborted, {.task_id = id, .engine_id = engine}, "aborted"));
  }

  void on_lost(const Status& why) {
    if (stopping) return;
    {
      // The controller has failed (or, after a restart, lost) the running task and the tasks
      // sent ahead of it: their results have nowhere to go (a controller ignores replies to
      // tasks it does not hold), and the engine should be free for new work when it is back.
      std::lock_guard lock(running_mutex);
      if (running_task != 0) {
        LOG_WARN("engine") << "interrupting task " << running_task << ": its controller connection is gone";
        runtime->interrupt();
      }
    }
    std::size_t dropped = 0;
    {
      std::lock_guard lock(mutex);
      dropped = std::erase_if(work, [](const Work& w) { return task_of(w) != nullptr; });
    }
    if (dropped) LOG_WARN("engine") << "dropped " << dropped << " task(s) sent ahead: their controller connection is gone";
    {
      std::lock_guard lock(bulk_mutex);
      bulk_replies.clear();  // their tasks failed with the connection
    }
    LOG_WARN("engine") << "lost the controller: " << why.message();
  }

  static std::uint64_t body_bytes(const std::vector<SharedBytes>& body) {
    std::uint64_t total = 0;
    for (const SharedBytes& segment : body) total += segment.size();
    return total;
  }
  static constexpr std::uint64_t kSealHeadroom = 64 * 1024;

  // Dropped while the link is down: the controller failed that task when the connection went.
  void send_reply(wire::Message reply) { (void)link->send(std::move(reply)); }

  // ---------- either thread: the Python thread's sends ----------

  // Sends `m` from the Python thread: written at once when the connection is idle (no
  // wake-up of the network thread), else posted to the network thread. Without the GIL: a
  // sent result's Python buffers are released through on_buffers_to_release either way.
  void send_from_python(wire::Message m) {
    if (posted_sends.load(std::memory_order_acquire) == 0) {
      std::shared_ptr<net::Connection> c = link->current_connection();
      if (c && c->send_now(m)) return;
    }
    post_send(std::move(m));
  }
  void post_send(wire::Message m) {
    posted_sends.fetch_add(1, std::memory_order_relaxed);
    loop.post([this, m = std::move(m)]() mutable {
      send_reply(std::move(m));
      posted_sends.fetch_sub(1, std::memory_order_release);
    });
  }

  void stop(const Status& why) {
    if (stopping) return;
    stopping = true;
    push_work(Stop{why});
    // The loop keeps running after the goodbye is flushed: run() stops it once the Python
    // thread has returned, and until then it must be there for the watchdog below.
    link->stop(unavailable("engine shutting down"), std::chrono::milliseconds(1000), nullptr);
    // User code stuck in a loop cannot be unwound politely: give it a moment, then go.
    exit_watchdog = loop.after(std::chrono::milliseconds(5'000), [] {
      LOG_WARN("engine") << "user code did not finish; exiting anyway";
      std::_Exit(0);
    });
  }

  // ---------- Python thread ----------

  Status serve() {
    for (;;) {
      Work w;
      {
        std::unique_lock lock(mutex);
        ready.wait(lock, [this] { return !work.empty(); });
        w = std::move(work.front());
        work.pop_front();
      }
      if (auto* stop_item = std::get_if<Stop>(&w)) return stop_item->why;
      if (auto* set = std::get_if<SetId>(&w)) {
        runtime->set_engine_id(static_cast<int>(set->id));
        python_engine_id = static_cast<std::uint32_t>(set->id);
        continue;
      }
      if (std::holds_alternative<ReleaseBuffers>(w)) {
        runtime->release_sent_buffers();
        continue;
      }
      wire::Message m;
      Status seal_failure;
      if (auto* bulk = std::get_if<BulkTask>(&w)) {
        // Its body came (or is still coming) on a data connection: the part becomes the
        // request the client sealed, [seal header, ciphertext...], or the task fails unopened.
        m = std::move(bulk->message);
        // Moved out of the future, not copied: a body whose buffers nothing else holds is
        // opened where it lies (e2e::open_body; 1 GB costs no second GB).
        StatusOr<std::vector<SharedBytes>> body = bulk->body.get();
        if (body.ok()) body = with_trailing_tag(m, std::move(body).value());
        if (body.ok()) {
          m.segments.resize(1);
          for (SharedBytes& segment : *body) m.segments.push_back(std::move(segment));
          m.envelope.set_bulk(false);
        } else {
          seal_failure = unavailable("its sealed body did not arrive on its data connection: " + body.status().message());
          LOG_WARN("engine") << "task " << m.envelope.task_id << ": " << seal_failure.message();
        }
      } else {
        m = std::move(std::get<wire::Message>(w));
      }
      wire::ReplyMeta meta;
      meta.started_us = now_us();
      if (seal_failure.ok() && m.envelope.sealed()) {
        const std::uint64_t task_id = m.envelope.task_id;
        const std::uint32_t routed_to = m.envelope.engine_id;
        auto opened = sealed.open(std::move(m), routed_to);
        if (opened.ok()) {
          m = std::move(opened->message);  // plaintext from here on
          running_sealed = std::move(opened).value();
        } else {
          seal_failure = opened.status();
          LOG_WARN("engine") << "refused sealed task " << task_id << ": " << seal_failure.message();
          m = wire::Message{};
          m.envelope.task_id = task_id;
          m.envelope.engine_id = routed_to;
        }
      }
      bool interrupted_early = false;
      {
        std::lock_guard lock(running_mutex);
        running_task = m.envelope.task_id;
        interrupted_early = interrupt_before_start == running_task;
      }
      TaskOutcome out;
      if (!seal_failure.ok()) {
        // Not run. The reply cannot be sealed (no key, or not this client's): the client
        // reports it as the engine's refusal, which the controller could also have written.
        out.ok = false;
        out.ename = "SealError";
        out.evalue = seal_failure.message();
        out.traceback = "SealError: " + seal_failure.message() + "\n";
      } else if (interrupted_early) {
        out.ok = false;
        out.ename = "KeyboardInterrupt";
        out.evalue = "interrupted before it started";
        out.traceback = "KeyboardInterrupt: interrupted before it started\n";
      } else {
        out = run_request(*runtime, m);
      }
      {
        std::lock_guard lock(running_mutex);
        running_task = 0;
      }
      meta.completed_us = now_us();
      meta.ok = out.ok;
      meta.ename = std::move(out.ename);
      meta.evalue = std::move(out.evalue);
      meta.traceback = std::move(out.traceback);
      std::vector<SharedBytes> body;
      body.reserve(wire::kReplyFixedSegments + out.value_segments.size());
      body.push_back(wire::encode_reply_meta(meta));
      body.push_back(SharedBytes::copy_of(out.stdout_text));
      body.push_back(SharedBytes::copy_of(out.stderr_text));
      for (auto& v : out.value_segments) body.push_back(std::move(v));
      // The controller would drop this connection over a reply beyond its largest message (its
      // welcome said which): answer with the reason instead, keeping the connection and the
      // engine's namespace. The headroom covers a seal's header and grant.
      if (const std::uint64_t limit = link->max_message_bytes(), bytes = body_bytes(body);
          bytes + kSealHeadroom > limit) {
        meta.ok = false;
        meta.ename = "MemoryError";
        meta.evalue = "the reply of " + std::to_string(bytes) + " bytes exceeds the controller's limit of " +
                      std::to_string(limit) + " bytes per message (controller --max-message-bytes)";
        meta.traceback = "MemoryError: " + meta.evalue + "\n";
        body = {wire::encode_reply_meta(meta), SharedBytes(), SharedBytes()};
      }
      // The outcome in the envelope lets the scheduler resolve dependencies without the body.
      const Outcome outcome = meta.ok ? Outcome::kOk : Outcome::kPythonError;
      const bool sealed_reply = running_sealed.has_value();
      if (running_sealed) {
        auto sealed_body = sealed.seal_reply(*running_sealed, m.envelope.engine_id, m.envelope.task_id, outcome, body);
        running_sealed.reset();
        if (!sealed_body.ok()) {
          LOG_ERROR("engine") << "cannot seal the reply of task " << m.envelope.task_id << ": "
                              << sealed_body.status().message();
          continue;  // never sent in the clear; the client's request times out
        }
        body = std::move(sealed_body).value();
      }
      wire::Message reply =
          wire::task_reply(outcome, {.task_id = m.envelope.task_id, .engine_id = m.envelope.engine_id}, {}, std::move(body));
      // A large sealed result goes around the controller's TLS, into its store (bulk path).
      if (sealed_reply && offer_in_bulk(reply)) continue;
      send_from_python(std::move(reply));
    }
  }
};

Engine::Engine() : impl_(std::make_unique<Impl>()) {}
Engine::~Engine() = default;

namespace {

StatusOr<tls::KeyAndCertificate> load_engine_identity(const EngineOptions& options) {
  std::optional<auth::PassphraseSource> source;
  if (!options.key_passphrase_from.empty()) {
    TESTUDO_ASSIGN_OR_RETURN(source, auth::parse_passphrase_source(options.key_passphrase_from));
  }
  std::string dir = options.identity_dir;
  if (dir.empty()) {
    auto slash = options.connection_file.rfind('/');
    std::string beside = slash == std::string::npos ? "." : options.connection_file.substr(0, slash);
    struct stat st {};
    const bool shared = ::stat(auth::identity_files(beside, options.identity_name).key_path.c_str(), &st) == 0;
    dir = shared ? beside : testudo_home() + "/identity";
  }
  return auth::load_or_create_identity(dir, options.identity_name, source);
}

}  // namespace

StatusOr<std::unique_ptr<Engine>> Engine::create(const EngineOptions& options) {
  std::unique_ptr<Engine> e(new Engine());
  Impl& impl = *e->impl_;
  impl.options = options;
  TESTUDO_ASSIGN_OR_RETURN(impl.controller, auth::load_connection_file(options.connection_file, wire::Role::kEngine));
  if (!options.dial_host.empty()) {
    impl.controller.host = options.dial_host;
    impl.controller.port = options.dial_port;
  }
  TESTUDO_ASSIGN_OR_RETURN(crypto::Digest nonce, crypto::random_secret());
  impl.instance = crypto::to_hex(std::span(nonce).first(16));
  TESTUDO_ASSIGN_OR_RETURN(impl.engine_info_json, engine_info(options.tags));
  TESTUDO_ASSIGN_OR_RETURN(impl.identity, load_engine_identity(options));
  TESTUDO_RETURN_IF_ERROR(impl.sealed.init(impl.identity, options));
  PythonRuntimeOptions runtime_options;
  runtime_options.max_output_chars = options.max_output_chars;
  // Live output: on the Python thread, for the task it runs; sent by the network thread.
  runtime_options.on_output = [&impl](int stream, std::string text) {
    std::uint64_t task;
    {
      std::lock_guard lock(impl.running_mutex);
      task = impl.running_task;
    }
    if (task == 0 || text.empty()) return;
    wire::Message chunk;
    chunk.envelope.kind = MessageKind::kTaskOutput;
    const auto output_stream = stream == 2 ? wire::OutputStream::kStderr : wire::OutputStream::kStdout;
    chunk.envelope.set_output_stream(output_stream);
    chunk.envelope.task_id = task;
    if (impl.running_sealed) {
      // Live output of a sealed request is sealed too (or not sent: the reply has all of it).
      const auto& r = *impl.running_sealed;
      auto sealed = impl.sealed.seal_output(r.key, r.seq, r.message.envelope.kind,
                                            static_cast<std::uint16_t>(output_stream), impl.python_engine_id, text);
      if (!sealed.ok()) return;
      chunk.segments = std::move(sealed).value();
    } else {
      chunk.segments.push_back(SharedBytes::copy_of(text));
    }
    impl.post_send(std::move(chunk));
  };
  runtime_options.max_result_bytes = options.max_result_bytes;
  // Called when a sent result's Python buffers can go: on the network thread, or on the
  // Python thread (without the GIL) after a reply it wrote itself.
  runtime_options.on_buffers_to_release = [&impl] { impl.push_work(Impl::ReleaseBuffers{}); };
  TESTUDO_ASSIGN_OR_RETURN(impl.runtime, PythonRuntime::create(runtime_options));

  auth::LinkOptions link;
  link.session = {impl.controller, impl.identity, impl.instance, options.controller_timeout};
  link.heartbeat_interval = options.heartbeat_interval;
  link.controller_timeout = options.controller_timeout;
  if (options.reconnect_give_up.count() > 0) link.give_up = options.reconnect_give_up;
  link.log_name = "engine";
  impl.link = std::make_unique<auth::ControllerLink>(impl.loop, std::move(link), impl.link_hooks());
  return e;
}

Status Engine::run() {
  Impl& impl = *impl_;
  // SIGTERM stops the engine. SIGINT, as for ipyparallel's engines, interrupts the running
  // task: it must reach the Python thread, so the network thread blocks it.
  impl.loop.on_signals({SIGTERM}, [&impl](int) {
    LOG_INFO("engine") << "SIGTERM: shutting down";
    impl.stop(ok_status());
  });
  impl.loop.post([&impl] { impl.link->start(); });
  std::thread network([&impl] {
    sigset_t interrupt;
    sigemptyset(&interrupt);
    sigaddset(&interrupt, SIGINT);
    pthread_sigmask(SIG_BLOCK, &interrupt, nullptr);
    impl.loop.run();
  });
  Status result = impl.serve();
  // Let the goodbye and last replies flush, then stop the network thread.
  impl.loop.post([&impl] {
    impl.stopping = true;
    impl.exit_watchdog = impl.loop.after(std::chrono::milliseconds(1200), [&impl] { impl.loop.stop(); });
    impl.link->stop(unavailable("engine exiting"), std::chrono::milliseconds(1000), [&impl] { impl.loop.stop(); });
  });
  network.join();
  return result;
}

}  // namespace testudo::engine
