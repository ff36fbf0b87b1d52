#include "testudo/client.h"

#include <sys/socket.h>

#include <atomic>
#include <cstring>
#include <condition_variable>
#include <future>
#include <mutex>
#include <thread>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "auth/identity.h"
#include "auth/link.h"
#include "base/log.h"
#include "base/profile.h"
#include "client/bulk_split.h"
#include "client/client_seals.h"
#include "client/reply.h"
#include "e2e/sealed_body.h"
#include "crypto/aead.h"
#include "crypto/crypto.h"
#include "crypto/private_file.h"
#include "net/host_address.h"
#include "net/net.h"
#include "wire/body.h"
#include "wire/control.h"

namespace testudo {

// ---------------- AsyncResult ----------------

struct AsyncResult::State {
  std::uint64_t request_id = 0;
  std::vector<EngineId> targets;

  mutable std::mutex mutex;
  // Waiters for the replies (wait, get) sleep on `done`; waiters for the task ids (task_ids)
  // on `acked`. The controller's acknowledgement, which precedes every reply, wakes only the
  // latter: a thread waiting for the replies sleeps through it (one wake-up per request, not
  // two). The last reply wakes both (task_ids also ends when the request fails unacknowledged).
  mutable std::condition_variable done;
  mutable std::condition_variable acked;
  std::vector<std::optional<EngineReply>> replies;  // by target index; guarded by mutex
  std::size_t remaining = 0;                        // guarded by mutex
  std::vector<std::function<void()>> callbacks;     // guarded by mutex
  std::vector<std::uint64_t> task_ids;              // from kSubmitted; guarded by mutex
  bool submitted = false;                           // guarded by mutex
  // get_result: slot i is for task slot_tasks[i] (replies are matched by task id).
  std::vector<std::uint64_t> slot_tasks;

  void acknowledge(std::vector<std::uint64_t> ids) {
    {
      std::lock_guard lock(mutex);
      task_ids = std::move(ids);
      submitted = true;
    }
    acked.notify_all();
  }

  // Fills the first empty slot of `reply.engine_id`. Returns true when the last one arrived.
  bool deliver(EngineReply reply) {
    std::vector<std::function<void()>> run;
    {
      std::lock_guard lock(mutex);
      std::size_t i = 0;
      for (; i < targets.size(); ++i) {
        if (replies[i]) continue;
        if (!slot_tasks.empty() ? slot_tasks[i] == reply.task_id
                                : targets[i] == reply.engine_id || targets[i] == kAnyEngine) {
          break;
        }
      }
      if (i == targets.size()) return remaining == 0;  // duplicate or unknown: ignore
      replies[i] = std::move(reply);
      if (--remaining > 0) return false;
      run.swap(callbacks);
    }
    done.notify_all();
    acked.notify_all();
    for (auto& fn : run) fn();
    return true;
  }

  // Ends every slot still waiting with `why`, a Status that reports an outcome.
  void fail_all(const Status& why) {
    const Outcome outcome = why.outcome().value_or(Outcome::kConnectionLost);
    std::vector<EngineId> missing;
    {
      std::lock_guard lock(mutex);
      for (std::size_t i = 0; i < targets.size(); ++i) {
        if (!replies[i]) missing.push_back(targets[i]);
      }
    }
    for (EngineId id : missing) deliver(client::failed_reply(id, outcome, why.message()));
  }
};

std::uint64_t AsyncResult::request_id() const { return state_ ? state_->request_id : 0; }
const std::vector<EngineId>& AsyncResult::targets() const {
  static const std::vector<EngineId> kNone;
  return state_ ? state_->targets : kNone;
}
bool AsyncResult::ready() const {
  if (!state_) return true;
  std::lock_guard lock(state_->mutex);
  return state_->remaining == 0;
}
bool AsyncResult::wait(std::chrono::milliseconds timeout) const {
  if (!state_) return true;
  std::unique_lock lock(state_->mutex);
  return state_->done.wait_for(lock, timeout, [this] { return state_->remaining == 0; });
}
StatusOr<std::vector<EngineReply>> AsyncResult::get(std::chrono::milliseconds timeout) const {
  if (!state_) return std::vector<EngineReply>{};
  if (!wait(timeout)) {
    return deadline_exceeded("request " + std::to_string(state_->request_id) + " not finished after " +
                             std::to_string(timeout.count()) + " ms");
  }
  std::lock_guard lock(state_->mutex);
  std::vector<EngineReply> out;
  out.reserve(state_->replies.size());
  for (auto& r : state_->replies) out.push_back(*r);
  return out;
}
StatusOr<std::vector<std::uint64_t>> AsyncResult::task_ids(std::chrono::milliseconds timeout) const {
  if (!state_) return std::vector<std::uint64_t>{};
  std::unique_lock lock(state_->mutex);
  // A request that failed before the controller saw it (lost connection) has no ids.
  if (!state_->acked.wait_for(lock, timeout, [this] { return state_->submitted || state_->remaining == 0; }) ||
      !state_->submitted) {
    return unavailable("the controller has not acknowledged request " + std::to_string(state_->request_id));
  }
  return state_->task_ids;
}

void AsyncResult::on_ready(std::function<void()> fn) const {
  if (!state_) return fn();
  {
    std::lock_guard lock(state_->mutex);
    if (state_->remaining > 0) {
      state_->callbacks.push_back(std::move(fn));
      return;
    }
  }
  fn();
}

// ---------------- Client ----------------

namespace {

// The head of a request of `kind`; push and pull name their value format.
wire::Envelope request_head(wire::MessageKind kind, std::optional<wire::ValueFormat> format = std::nullopt) {
  wire::Envelope head;
  head.kind = kind;
  if (format) head.set_value_format(*format);
  return head;
}

}  // namespace


struct Client::Impl {
  ClientOptions options;
  net::EventLoop loop;
  std::thread network;
  std::atomic<std::uint64_t> next_request{1};
  std::atomic<bool> connected{false};
  std::atomic<std::uint32_t> client_id{0};

  // Loop-thread state.
  // The controller connection, redialed after a loss (F2). Declared after `loop`: destroyed
  // before it.
  std::unique_ptr<auth::ControllerLink> link;
  std::unordered_map<std::uint64_t, std::shared_ptr<AsyncResult::State>> pending;
  std::unordered_map<std::uint64_t, std::shared_ptr<std::promise<StatusOr<std::string>>>> pending_control;
  Status lost_reason = outcome_status(Outcome::kConnectionLost, "not connected to the controller");
  Client::OutputHandler output_handler;
  // End-to-end sealing (ClientOptions::e2e): null when off, and why.
  std::unique_ptr<client::ClientSeals> seals;
  std::string sealing_off_because;

  // Decides whether this client seals (ClientOptions::E2e) from what it holds itself: its
  // identity key (`identity`; null with a login) and its roots for engine keys.
  Status start_sealing(const ClientOptions& options, const tls::KeyAndCertificate* identity) {
    using E2e = ClientOptions::E2e;
    if (options.e2e == E2e::kOff) {
      sealing_off_because = "turned off for this client (e2e=False, --no-e2e)";
      return ok_status();
    }
    // Engines check the offers a client signs against keys they were given: a login
    // identity (vouched for by the controller alone) has no key they could check.
    if (identity == nullptr) {
      const std::string why = "engines cannot check an identity only the controller vouches for";
      if (options.e2e == E2e::kRequired) {
        return invalid_argument("end-to-end sealing needs the client's identity key, not a " + options.login.method +
                                " login (" + why + ")");
      }
      sealing_off_because = "a " + options.login.method + " login cannot seal (" + why + ")";
      return ok_status();
    }
    auto created = client::ClientSeals::create(options, *identity);
    if (!created.ok() && created.status().code() == StatusCode::kNotFound) {  // no root for engine keys
      if (options.e2e == E2e::kRequired) {
        return invalid_argument("end-to-end sealing is required (e2e=True, --e2e), but " + created.status().message());
      }
      sealing_off_because = created.status().message();
      LOG_INFO("client") << "not sealing end to end: " << sealing_off_because;
      return ok_status();
    }
    TESTUDO_ASSIGN_OR_RETURN(seals, std::move(created));
    return ok_status();
  }
  // The bulk path (ClientOptions::bulk_from_bytes): where data connections dial (the address
  // the control connection dialed), and the sealed bodies waiting for their tickets: by
  // request id until its kSubmitted names the tasks (per target, the ciphertext segments of
  // its part), then by task id until its kBulkTicket comes (as the task leaves for its
  // engine) or its reply. A load-balanced task's body is kept until its reply: a retry
  // leaves for another engine with a new ticket, and the body goes again. Loop thread.
  std::string data_host;
  std::uint16_t data_port = 0;
  // A part's plaintext and how to seal it: sealed as it is sent (client/bulk_split.h).
  struct BulkPart {
    std::vector<SharedBytes> plaintext;  // shared with the caller's buffers, not copied
    std::shared_ptr<const e2e::PreparedSeal> seal;
  };
  struct BulkBody {
    BulkPart part;
    bool until_reply = false;  // load balanced: it may be asked for again
  };
  struct BulkRequest {
    std::vector<BulkPart> parts;  // per target; one part, load balanced
    bool balanced = false;
  };
  std::unordered_map<std::uint64_t, BulkRequest> bulk_bodies;
  std::unordered_map<std::uint64_t, BulkBody> bulk_by_task;
  // How a data-connection thread hands a fetched reply back to the loop: only while the loop
  // lives (the destructor closes it first).
  struct Mailbox {
    std::mutex mutex;
    net::EventLoop* loop = nullptr;  // guarded by mutex
    void post(std::function<void()> fn) {
      std::lock_guard lock(mutex);
      if (loop != nullptr) loop->post(std::move(fn));
    }
  };
  std::shared_ptr<Mailbox> mailbox = std::make_shared<Mailbox>();
  // Client::connect waits here for the first attempt's outcome (then it is reset).
  std::shared_ptr<std::promise<Status>> first_attempt;
  // What sealing showed the controller did behind this client's back (Client::seal_violations).
  static constexpr std::size_t kMaxViolations = 1000;
  mutable std::mutex violations_mutex;
  std::vector<std::string> violations;  // guarded by violations_mutex

  void note_violation(const std::string& why) {
    LOG_ERROR("client") << "end-to-end: " << why;
    std::lock_guard lock(violations_mutex);
    if (violations.size() < kMaxViolations) violations.push_back(why);
  }

  // Work for the loop thread from callers' threads, in call order. A burst of requests
  // wakes the loop once and leaves in one write (one TLS record, one syscall), instead of
  // one wake-up and one write per request.
  std::mutex outbox_mutex;
  std::vector<std::function<void()>> outbox;  // guarded by outbox_mutex
  bool outbox_posted = false;                 // guarded by outbox_mutex

  void submit(std::function<void()> fn) {
    {
      std::lock_guard lock(outbox_mutex);
      outbox.push_back(std::move(fn));
      if (outbox_posted) return;
      outbox_posted = true;
    }
    loop.post([this] { drain_outbox(); });
  }

  void drain_outbox() {
    std::vector<std::function<void()>> work;
    {
      std::lock_guard lock(outbox_mutex);
      work.swap(outbox);
      outbox_posted = false;
    }
    for (auto& fn : work) fn();
  }

  ~Impl() {
    {
      std::lock_guard lock(mailbox->mutex);
      mailbox->loop = nullptr;
    }
    loop.post([this] {
      // Pending requests fail with "client closed" (on_lost), nothing redials.
      if (link) link->stop(unavailable("client closed"));
      loop.stop();
    });
    if (network.joinable()) network.join();
  }

  // The link's options for a client. No heartbeats: the controller does not expect them from
  // clients (it sweeps only engines), an idle client then costs the controller nothing, and
  // every wait of a client has a deadline its caller chose (request_timeout, get(timeout)),
  // so a silent controller cannot hang a caller. The price: a controller host that vanishes
  // without closing the connection is noticed only when TCP gives up on it.
  static auth::LinkOptions link_options(auth::SessionOptions session) {
    auth::LinkOptions o;
    o.session = std::move(session);
    o.retry_first_attempt = false;  // Client::connect reports the first failure as it is
    o.log_name = "client";
    o.retry_log_level = log::Level::kDebug;
    return o;
  }

  auth::LinkHooks link_hooks() {
    return {
        .on_welcome = {},
        .on_connected = [this](std::uint32_t id) { on_connected(id); },
        .on_message = [this](wire::Message&& m) { on_message(std::move(m)); },
        .on_lost = [this](const Status& why) { on_lost(why); },
        .on_stopped = [this](const Status& why) { on_stopped(why); },
    };
  }

  void on_connected(std::uint32_t id) {
    const bool first = first_attempt != nullptr;
    client_id = id;
    connected = true;
    if (first) {
      std::exchange(first_attempt, nullptr)->set_value(ok_status());
    } else {
      LOG_INFO("client") << "reconnected to the controller as client " << id;
    }
  }

  void on_stopped(const Status& why) {
    if (first_attempt) return std::exchange(first_attempt, nullptr)->set_value(why);
    // Refused on a redial (e.g. a revoked key): no more redials; requests fail with this.
    LOG_WARN("client") << "not reconnecting: " << why.message();
    lost_reason = outcome_status(Outcome::kConnectionLost,
                                 "connection to the controller lost; reconnecting was refused: " + why.message());
  }

  void on_message(wire::Message&& m) {
    switch (m.envelope.kind) {
      case wire::MessageKind::kTaskReply: {
        if (m.envelope.bulk()) return fetch_bulk_reply(std::move(m));
        auto it = pending.find(m.envelope.request_id);
        if (it == pending.end()) {
          // An answer to a request already answered. Only one thing about it matters: a
          // second genuine answer to a sealed balanced request (it ran twice).
          std::string why;
          if (seals && seals->open_reply(m, why) == client::ClientSeals::Verdict::kDuplicate) note_violation(why);
          return;
        }
        auto state = it->second;
        const std::uint64_t request_id = m.envelope.request_id;
        if (!bulk_by_task.empty()) bulk_by_task.erase(m.envelope.task_id);  // answered: its body is not wanted
        std::string why;
        if (!seals && !m.segments.empty() && e2e::decode_seal_header(m.segments[0].span()).ok()) {
          why = "the result of task " + std::to_string(m.envelope.task_id) +
                " is sealed end to end: open it with a client that seals (this one does not: " + sealing_off_because + ")";
        } else if (seals) {
          const auto verdict = seals->open_reply(m, why);
          if (verdict == client::ClientSeals::Verdict::kDuplicate) return note_violation(why);
          if (verdict != client::ClientSeals::Verdict::kBroken) why.clear();
        }
        if (!why.empty()) {
          LOG_WARN("client") << why;
          EngineReply broken = client::failed_reply(m.envelope.engine_id, Outcome::kSealBroken, why);
          broken.task_id = m.envelope.task_id;
          if (state->deliver(std::move(broken))) pending.erase(request_id);
          return;
        }
        if (state->deliver(client::engine_reply(std::move(m)))) {
          pending.erase(request_id);
          bulk_bodies.erase(request_id);  // a request refused before it was acknowledged
        }
        return;
      }
      case wire::MessageKind::kBulkTicket:
        return send_bulk_body(m);
      case wire::MessageKind::kEngineListReply:
      case wire::MessageKind::kClusterStatusReply:
      case wire::MessageKind::kClusterShutdownReply:
      case wire::MessageKind::kAbortReply:
      case wire::MessageKind::kInterruptReply:
      case wire::MessageKind::kQueueStatusReply:
      case wire::MessageKind::kResultStatusReply:
      case wire::MessageKind::kDbQueryReply:
      case wire::MessageKind::kPurgeResultsReply:
      case wire::MessageKind::kKeyAdminReply: {
        auto it = pending_control.find(m.envelope.request_id);
        if (it == pending_control.end()) return;
        // A refused or failed control request comes back with its outcome and the reason.
        it->second->set_value(client::control_answer(std::move(m)));
        pending_control.erase(it);
        return;
      }
      case wire::MessageKind::kRejected:
        LOG_WARN("client") << "the controller refused a request: " << m.envelope.text;
        return;
      case wire::MessageKind::kSubmitted: {
        auto it = pending.find(m.envelope.request_id);
        if (it == pending.end() || m.segments.size() != 1) return;
        auto ids = wire::decode_ids(m.segments[0]);
        if (!ids.ok()) return;
        if (seals) seals->submitted(m.envelope.request_id, *ids);
        if (auto bodies = bulk_bodies.find(m.envelope.request_id); bodies != bulk_bodies.end()) {
          for (std::size_t i = 0; i < ids->size() && i < bodies->second.parts.size(); ++i) {
            bulk_by_task[(*ids)[i]] = {std::move(bodies->second.parts[i]), bodies->second.balanced};
          }
          bulk_bodies.erase(bodies);
        }
        it->second->acknowledge(std::move(ids).value());
        return;
      }
      case wire::MessageKind::kTaskOutput:
        if (seals && output_handler) {
          // A sealed request's output opens or is dropped; never shown as the controller sent it.
          bool was_sealed = false;
          if (auto text = seals->open_output(m, was_sealed)) {
            output_handler(m.envelope.request_id, m.envelope.engine_id, static_cast<int>(m.envelope.output_stream()),
                           *text);
          }
          if (was_sealed) return;
        }
        if (output_handler && m.segments.size() == 1) {
          output_handler(m.envelope.request_id, m.envelope.engine_id, static_cast<int>(m.envelope.output_stream()),
                         m.segments[0].view());
        }
        return;
      default:
        return;
    }
  }

  void on_lost(const Status& why) {
    connected = false;
    lost_reason = outcome_status(Outcome::kConnectionLost, "connection to the controller lost: " + why.message());
    bulk_bodies.clear();
    bulk_by_task.clear();
    auto requests = std::move(pending);
    pending.clear();
    for (auto& [id, state] : requests) state->fail_all(lost_reason);
    auto controls = std::move(pending_control);
    pending_control.clear();
    for (auto& [id, promise] : controls) promise->set_value(lost_reason);
    // Results of requests that were in flight stay with the controller (get_result by task
    // id); new requests work again once the link is up again.
  }

  // `head`: the request's kind and per-kind flags; the rest is filled in here.
  AsyncResult send_request(wire::Envelope head, const std::vector<EngineId>& targets,
                           std::vector<SharedBytes> segments, std::optional<wire::TaskOptions> balanced = {},
                           std::vector<std::uint64_t> slot_tasks = {}) {
    auto state = std::make_shared<AsyncResult::State>();
    state->request_id = next_request++;
    // A load-balanced request has one reply slot, for whichever engine runs it.
    state->targets = balanced ? std::vector<EngineId>{kAnyEngine} : targets;
    std::vector<EngineId> allowed = balanced ? targets : std::vector<EngineId>{};
    head.set_load_balanced(balanced.has_value());
    head.request_id = state->request_id;
    // get_result carries ids, not engines: no targets for the controller to route.
    head.targets = balanced ? std::move(allowed)
                            : head.kind == wire::MessageKind::kGetResult ? std::vector<EngineId>{} : state->targets;
    if (balanced) head.text = wire::encode_task_options(*balanced);
    state->slot_tasks = std::move(slot_tasks);
    state->replies.resize(state->targets.size());
    state->remaining = state->targets.size();
    if (state->targets.empty()) return AsyncResult(state);
    // A sealed body this large goes on data connections (the bulk path), sealed as it is
    // sent once the controller's ticket comes; here only its parts' headers and sizes.
    std::vector<BulkPart> bulk;
    if (seals && head.kind != wire::MessageKind::kGetResult) {
      if (!balanced) {
        // An engine the controller does not list cannot be sealed for: its slot fails now, as
        // the controller would have failed it, and the request goes to the others.
        auto gone = unlisted(head.targets);
        if (!gone.ok()) {
          state->fail_all(outcome_status(Outcome::kSealBroken, gone.status().message()));
          return AsyncResult(state);
        }
        for (const auto& [id, why] : *gone) {
          state->deliver(client::failed_reply(id, Outcome::kNoSuchEngine, why));
          std::erase(head.targets, id);
        }
        if (head.targets.empty()) return AsyncResult(state);
      }
      auto prepared = balanced ? seal_balanced(state->request_id, head, segments)
                               : seals->prepare_request(state->request_id, head, head.targets, segments);
      if (!prepared.ok()) {
        state->fail_all(outcome_status(Outcome::kSealBroken, prepared.status().message()));
        return AsyncResult(state);
      }
      std::vector<SharedBytes> sealed;
      const bool in_bulk = client::goes_in_bulk(head.kind, segments, options.bulk_from_bytes);
      for (e2e::PreparedSeal& part : *prepared) {
        if (in_bulk) {
          for (SharedBytes& s : client::bulk_control_part(part, segments)) sealed.push_back(std::move(s));
          bulk.push_back({segments, std::make_shared<const e2e::PreparedSeal>(std::move(part))});
          continue;
        }
        auto one = e2e::seal_prepared(std::move(part), segments);
        if (!one.ok()) {
          state->fail_all(outcome_status(Outcome::kSealBroken, one.status().message()));
          return AsyncResult(state);
        }
        for (SharedBytes& s : *one) sealed.push_back(std::move(s));
      }
      segments = std::move(sealed);
      head.set_sealed(true);
      head.set_bulk(in_bulk);
    }
    // The controller would drop the connection over a message beyond its limits (and every
    // other request on it): refuse this one alone, before it leaves. Its largest message is
    // the one its welcome announced (controller --max-message-bytes).
    wire::Limits limits;
    limits.max_message_bytes = link->max_message_bytes();
    Status fits = wire::check_outgoing(head, segments, limits);
    if (fits.ok() && !bulk.empty()) {
      // A bulk body goes on its data connection, but the controller holds it to the same
      // largest message (as a transfer's total: the ciphertext and its tag).
      std::uint64_t body_bytes = crypto::kAeadTagBytes;
      for (const SharedBytes& s : bulk.front().plaintext) body_bytes += s.size();
      if (body_bytes > limits.max_message_bytes) {
        fits = resource_exhausted("the request's " + std::to_string(body_bytes) + " bytes exceed the limit of " +
                                  std::to_string(limits.max_message_bytes) + " bytes");
      }
    }
    if (!fits.ok()) {
      std::string why = fits.message();
      if (limits.max_message_bytes != wire::Limits{}.max_message_bytes) why += " (controller --max-message-bytes)";
      state->fail_all(outcome_status(Outcome::kTooLarge, why));
      return AsyncResult(state);
    }
    submit([this, state, balanced = balanced.has_value(), head = std::move(head), segments = std::move(segments), bulk = std::move(bulk)]() mutable {
      // Not sent while the link is down (the link's resend rules): it fails at once.
      if (!link->connected()) return state->fail_all(lost_reason);
      pending[state->request_id] = state;
      if (!bulk.empty()) bulk_bodies[state->request_id] = {std::move(bulk), balanced};
      wire::Message m;
      m.envelope = std::move(head);
      m.segments = std::move(segments);
      (void)link->send(std::move(m));
    });
    return AsyncResult(state);
  }

  // A sealed result stored in the controller's file, whose ciphertext comes on a data
  // connection ([seal header, transfer sizes, ticket]): fetched by a thread of its own, then
  // handled on the loop as if it had come whole. A failed fetch fails that reply (the result
  // stays in the controller's store: get_result fetches it again).
  void fetch_bulk_reply(wire::Message m) {
    const auto ticket = m.segments.size() == 3 ? net::ticket_in(m.segments[2]) : std::nullopt;
    auto sizes = ticket ? net::decode_transfer_sizes(m.segments[1].span(), wire::Limits{}.max_segments,
                                                     link->max_message_bytes())
                        : StatusOr<std::vector<std::uint64_t>>(data_loss("a malformed bulk reply"));
    if (!sizes.ok()) return bulk_reply_failed(m.envelope, sizes.status());
    m.segments.resize(1);
    m.envelope.set_bulk(false);
    std::thread([this, mailbox = mailbox, host = data_host, port = data_port,
                 hello = net::DataHello{net::DataRole::kReceiver, *ticket}, sizes = std::move(sizes).value(),
                 m = std::move(m), timeout = options.connect_timeout]() mutable {
      auto body = net::receive_transfer(host, port, hello, sizes, timeout);
      mailbox->post([this, m = std::move(m), body = std::move(body)]() mutable {
        if (!body.ok()) return bulk_reply_failed(m.envelope, body.status());
        for (SharedBytes& segment : *body) m.segments.push_back(std::move(segment));
        on_message(std::move(m));
      });
    }).detach();
  }
  void bulk_reply_failed(const wire::Envelope& reply, const Status& why) {
    const std::string text = "the result of task " + std::to_string(reply.task_id) +
                             " did not arrive on its data connection (" + why.message() +
                             "); it is kept in the controller's store: get_result(" + std::to_string(reply.task_id) +
                             ") fetches it again";
    LOG_WARN("client") << text;
    auto it = pending.find(reply.request_id);
    if (it == pending.end()) return;
    EngineReply failed = client::failed_reply(reply.engine_id, Outcome::kConnectionLost, text);
    failed.task_id = reply.task_id;
    if (it->second->deliver(std::move(failed))) pending.erase(it);
  }

  // The controller's ticket for a bulk task, as it leaves for its engine: its body goes on a
  // data connection, sealed chunk by chunk as it is sent, from a thread of its own (which
  // shares the plaintext buffers, not a copy). A failure is logged here; the task's reply
  // says it too (its engine answers that the body never arrived).
  void send_bulk_body(const wire::Message& ticket) {
    auto found = bulk_by_task.find(ticket.envelope.task_id);
    if (found == bulk_by_task.end()) return;
    BulkPart part = found->second.part;  // shared, not copied
    if (!found->second.until_reply) bulk_by_task.erase(found);
    const auto t = ticket.segments.size() == 1 ? net::ticket_in(ticket.segments[0]) : std::nullopt;
    if (!t) {
      LOG_WARN("client") << "task " << ticket.envelope.task_id << ": a malformed data-connection ticket";
      return;
    }
    std::thread([host = data_host, port = data_port, hello = net::DataHello{net::DataRole::kSender, *t},
                 part = std::move(part), task = ticket.envelope.task_id, timeout = options.connect_timeout] {
      const Status sent = client::send_sealed_transfer(host, port, hello, part.plaintext, *part.seal, timeout);
      if (!sent.ok()) LOG_WARN("client") << "the sealed body of task " << task << " was not sent: " << sent.message();
    }).detach();
  }

  // The direct targets this client cannot seal for because the controller lists no such
  // engine, now or before, each with the words the controller would have answered with;
  // the engine list is learned first if some target is new to this client.
  StatusOr<std::vector<std::pair<EngineId, std::string>>> unlisted(const std::vector<EngineId>& targets) {
    if (seals->knows(targets)) return std::vector<std::pair<EngineId, std::string>>{};
    // The network thread cannot wait for its own answer.
    if (std::this_thread::get_id() == network.get_id()) {
      return permission_denied("engines not yet verified for end-to-end sealing");
    }
    TESTUDO_ASSIGN_OR_RETURN(std::string list, control(wire::MessageKind::kEngineList));
    seals->learn(list);
    return seals->unknown(targets);
  }

  // `body` sealed for a load-balanced request, whose allowed engines (head.targets; none:
  // any) become those that hold this client's keys: the controller may place it only there.
  // Engines listed but not paired yet are paired first, with one sealed empty pull each.
  StatusOr<std::vector<e2e::PreparedSeal>> seal_balanced(std::uint64_t request_id, wire::Envelope& head,
                                                         std::span<const SharedBytes> body) {
    const bool on_network_thread = std::this_thread::get_id() == network.get_id();
    if (!on_network_thread) {
      // New engines are noticed within a second, not by asking before every task.
      const bool stale = std::chrono::steady_clock::now() - seals->learned_at() > std::chrono::seconds(1);
      if (stale || !seals->knows(head.targets)) {
        TESTUDO_ASSIGN_OR_RETURN(std::string list, control(wire::MessageKind::kEngineList));
        seals->learn(list);
      }
    }
    const std::vector<EngineId> candidates = head.targets.empty() ? seals->listed() : head.targets;
    if (!on_network_thread) {
      if (std::vector<EngineId> fresh = seals->pairable(candidates); !fresh.empty()) {
        wire::Envelope pull = request_head(wire::MessageKind::kPull, wire::ValueFormat::kLiteral);
        send_request(std::move(pull), fresh, {wire::encode_names({})}).wait(options.request_timeout);
      }
    }
    std::vector<EngineId> paired = seals->paired(candidates);
    if (paired.empty()) {
      return permission_denied("no engine holds this client's keys for a sealed load-balanced request (none could be "
                               "verified, or none answered the pairing in time)");
    }
    head.targets = std::move(paired);
    TESTUDO_ASSIGN_OR_RETURN(e2e::PreparedSeal one, seals->prepare_balanced(request_id, head, body));
    std::vector<e2e::PreparedSeal> out;
    out.push_back(std::move(one));
    return out;
  }

  StatusOr<std::string> control(wire::MessageKind kind, std::vector<EngineId> targets = {},
                                std::vector<SharedBytes> segments = {}, std::string text = {}) {
    auto promise = std::make_shared<std::promise<StatusOr<std::string>>>();
    auto future = promise->get_future();
    std::uint64_t id = next_request++;
    submit([this, promise, kind, id, targets = std::move(targets), segments = std::move(segments),
               text = std::move(text)]() mutable {
      if (!link->connected()) return promise->set_value(lost_reason);
      pending_control[id] = promise;
      wire::Message m;
      m.envelope.kind = kind;
      m.envelope.request_id = id;
      m.envelope.targets = std::move(targets);
      m.envelope.text = std::move(text);
      m.segments = std::move(segments);
      (void)link->send(std::move(m));
    });
    if (future.wait_for(options.request_timeout) != std::future_status::ready) {
      loop.post([this, id] { pending_control.erase(id); });
      return deadline_exceeded(std::string("no answer to ") + std::string(wire::kind_name(kind)) + " within " +
                               std::to_string(options.request_timeout.count()) + " ms");
    }
    return future.get();
  }
};

Client::Client() : impl_(std::make_shared<Impl>()) {}
Client::~Client() = default;

namespace {

// The client connection file of `options`. The profile's own (no connection_file given) is
// read only from a security directory closed to others, like the file itself: whoever can
// write there could point this client at their own controller's file.
StatusOr<auth::ConnectionInfo> load_client_connection_file(const ClientOptions& options) {
  if (!options.connection_file.empty()) return auth::load_connection_file(options.connection_file, wire::Role::kClient);
  const ProfilePaths paths = profile_paths(options.profile);
  if (Status st = crypto::check_private_dir(paths.security_dir); !st.ok() && st.code() != StatusCode::kNotFound) {
    return st;
  }
  return auth::load_connection_file(paths.client_connection_file, wire::Role::kClient);
}

}  // namespace

StatusOr<ControllerAddress> controller_address(const ClientOptions& options) {
  TESTUDO_ASSIGN_OR_RETURN(auth::ConnectionInfo info, load_client_connection_file(options));
  return ControllerAddress{info.host, info.port, net::is_address_of_this_host(info.host) ? "" : info.ssh};
}

StatusOr<std::unique_ptr<Client>> Client::connect(const ClientOptions& options) {
  TESTUDO_ASSIGN_OR_RETURN(auth::ConnectionInfo info, load_client_connection_file(options));
  if (!options.dial_host.empty()) {
    if (options.dial_port == 0) return invalid_argument("dial_host without dial_port");
    info.host = options.dial_host;
    info.port = options.dial_port;
  }
  std::unique_ptr<Client> client(new Client());
  Impl& impl = *client->impl_;
  impl.options = options;
  impl.network = std::thread([&impl] { impl.loop.run(); });

  TESTUDO_ASSIGN_OR_RETURN(crypto::Digest nonce, crypto::random_secret());
  auth::SessionOptions so{info, std::nullopt, crypto::to_hex(std::span(nonce).first(16)), options.connect_timeout};
  auto method = auth::login_method_from_name(options.login.method);
  if (!method) {
    return invalid_argument("unknown login method '" + options.login.method + "' (key, password, token or kerberos)");
  }
  if (*method == auth::LoginMethod::kKey) {
    // Results belong to this identity: the same user fetches them from another process later.
    std::optional<auth::PassphraseSource> passphrase_from;
    if (options.key_passphrase) {
      passphrase_from = auth::PassphraseSource{auth::PassphraseSource::Kind::kCallback, "", options.key_passphrase};
    } else if (!options.key_passphrase_from.empty()) {
      TESTUDO_ASSIGN_OR_RETURN(passphrase_from, auth::parse_passphrase_source(options.key_passphrase_from));
    }
    TESTUDO_ASSIGN_OR_RETURN(so.identity, auth::load_or_create_identity(options.identity_dir.empty()
                                                                            ? testudo_home() + "/identity"
                                                                            : options.identity_dir,
                                                                        options.identity_name, passphrase_from));
  } else {
    // The login is the identity: TLS gets a throwaway key.
    auth::LoginChoice choice{*method, options.login.username, options.login.secret, options.login.service};
    TESTUDO_ASSIGN_OR_RETURN(so.login, auth::make_login_client_factory(std::move(choice), info.host));
  }
  TESTUDO_RETURN_IF_ERROR(impl.start_sealing(options, so.identity ? &*so.identity : nullptr));
  impl.mailbox->loop = &impl.loop;
  impl.data_host = so.controller.host;
  impl.data_port = so.controller.port;
  impl.link = std::make_unique<auth::ControllerLink>(impl.loop, Impl::link_options(std::move(so)), impl.link_hooks());
  auto first = std::make_shared<std::promise<Status>>();
  auto future = first->get_future();
  impl.loop.post([&impl, first] {
    impl.first_attempt = first;
    impl.link->start();
  });
  // open_session enforces the timeout itself; the extra second only guards against a bug.
  if (future.wait_for(options.connect_timeout + std::chrono::seconds(1)) != std::future_status::ready) {
    return deadline_exceeded("connecting to " + info.host + ":" + std::to_string(info.port) + " timed out");
  }
  Status connected = future.get();
  if (!connected.ok()) {
    // To a user, "not trusted yet" is a refusal like any other (PermissionError in Python).
    if (connected.code() == StatusCode::kFailedPrecondition) return permission_denied(connected.message());
    return connected;
  }
  return client;
}

std::uint32_t Client::client_id() const { return impl_->client_id; }

void Client::set_output_handler(OutputHandler handler) {
  auto* impl = impl_.get();
  std::promise<void> done;
  auto set = done.get_future();
  impl->loop.post([impl, &done, handler = std::move(handler)]() mutable {
    impl->output_handler = std::move(handler);
    done.set_value();
  });
  set.wait();  // from now on, output goes to the new handler
}
bool Client::connected() const { return impl_->connected; }

StatusOr<std::vector<EngineId>> Client::engine_ids() {
  TESTUDO_ASSIGN_OR_RETURN(std::string text, impl_->control(wire::MessageKind::kEngineList));
  auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object() || !j.contains("engines") || !j["engines"].is_array()) {
    return data_loss("malformed engine list from the controller");
  }
  std::vector<EngineId> ids;
  for (const auto& id : j["engines"]) {
    if (!id.is_number_unsigned() || id.get<std::uint64_t>() > 0xFFFFFFFFu) return data_loss("malformed engine id");
    ids.push_back(static_cast<EngineId>(id.get<std::uint64_t>()));
  }
  return ids;
}

namespace {

// {"<key>": n} from a control reply.
StatusOr<std::size_t> count_from(const StatusOr<std::string>& reply, const char* key) {
  if (!reply.ok()) return reply.status();
  auto j = nlohmann::json::parse(*reply, nullptr, false);
  if (j.is_discarded() || !j.contains(key) || !j[key].is_number_unsigned()) return data_loss("malformed reply");
  return j[key].get<std::size_t>();
}

}  // namespace

StatusOr<std::size_t> Client::shutdown_engines(const std::vector<EngineId>& targets) {
  if (targets.empty()) return std::size_t{0};
  return count_from(impl_->control(wire::MessageKind::kClusterShutdown, targets), "stopped");
}

StatusOr<std::string> Client::engines_json() { return impl_->control(wire::MessageKind::kEngineList); }

StatusOr<std::string> Client::cluster_status() { return impl_->control(wire::MessageKind::kClusterStatus); }

Status Client::shutdown_cluster() {
  auto r = impl_->control(wire::MessageKind::kClusterShutdown);
  return r.ok() ? ok_status() : r.status();
}

AsyncResult Client::execute(const std::vector<EngineId>& targets, std::string_view code, bool display_result) {
  wire::Envelope head = request_head(wire::MessageKind::kExecute);
  head.set_display_result(display_result);
  return impl_->send_request(std::move(head), targets, {SharedBytes::copy_of(code)});
}

AsyncResult Client::push_literals(const std::vector<EngineId>& targets,
                                  const std::vector<std::pair<std::string, std::string>>& values) {
  return impl_->send_request(request_head(wire::MessageKind::kPush, wire::ValueFormat::kLiteral), targets,
                             {wire::encode_literal_pairs(values)});
}

AsyncResult Client::push_pickled(const std::vector<EngineId>& targets, std::vector<SharedBytes> segments) {
  return impl_->send_request(request_head(wire::MessageKind::kPush, wire::ValueFormat::kPickle), targets,
                             std::move(segments));
}

AsyncResult Client::pull_repr(const std::vector<EngineId>& targets, const std::vector<std::string>& names) {
  return impl_->send_request(request_head(wire::MessageKind::kPull, wire::ValueFormat::kLiteral), targets,
                             {wire::encode_names(names)});
}

AsyncResult Client::pull_pickled(const std::vector<EngineId>& targets, const std::vector<std::string>& names) {
  return impl_->send_request(request_head(wire::MessageKind::kPull, wire::ValueFormat::kPickle), targets,
                             {wire::encode_names(names)});
}

AsyncResult Client::apply(const std::vector<EngineId>& targets, std::vector<SharedBytes> segments) {
  return impl_->send_request(request_head(wire::MessageKind::kApply), targets, std::move(segments));
}

namespace {

wire::TaskOptions to_wire(const TaskOptions& o) {
  wire::TaskOptions w;
  w.retries = o.retries;
  if (o.timeout) w.timeout_ms = static_cast<std::uint32_t>(std::max<long long>(1, o.timeout->count()));
  w.after = o.after;
  w.follow = o.follow;
  w.after_rule = {.all = o.after_rule.all, .success = o.after_rule.success, .failure = o.after_rule.failure};
  w.follow_rule = {.all = o.follow_rule.all, .success = o.follow_rule.success, .failure = o.follow_rule.failure};
  return w;
}


}  // namespace

AsyncResult Client::apply_balanced(const std::vector<EngineId>& allowed, std::vector<SharedBytes> segments,
                                   const TaskOptions& options) {
  return impl_->send_request(request_head(wire::MessageKind::kApply), allowed, std::move(segments), to_wire(options));
}

AsyncResult Client::execute_balanced(const std::vector<EngineId>& allowed, std::string_view code,
                                     const TaskOptions& options) {
  return impl_->send_request(request_head(wire::MessageKind::kExecute), allowed, {SharedBytes::copy_of(code)},
                             to_wire(options));
}

StatusOr<std::size_t> Client::abort(const std::vector<std::uint64_t>& task_ids) {
  return count_from(impl_->control(wire::MessageKind::kAbort, {}, {wire::encode_ids(task_ids)}), "aborted");
}

StatusOr<std::size_t> Client::interrupt(const std::vector<EngineId>& targets) {
  return count_from(impl_->control(wire::MessageKind::kInterrupt, targets), "interrupted");
}

StatusOr<std::string> Client::queue_status() { return impl_->control(wire::MessageKind::kQueueStatus); }

AsyncResult Client::get_result(const std::vector<std::uint64_t>& task_ids) {
  return impl_->send_request(request_head(wire::MessageKind::kGetResult), std::vector<EngineId>(task_ids.size(), kAnyEngine),
                             {wire::encode_ids(task_ids)}, std::nullopt, task_ids);
}

StatusOr<std::string> Client::result_status(const std::vector<std::uint64_t>& task_ids) {
  return impl_->control(wire::MessageKind::kResultStatus, {}, {wire::encode_ids(task_ids)});
}

StatusOr<std::string> Client::db_query(const std::string& filter_json) {
  return impl_->control(wire::MessageKind::kDbQuery, {}, {}, filter_json);
}

StatusOr<std::size_t> Client::purge_results(const std::vector<std::uint64_t>& task_ids) {
  return count_from(impl_->control(wire::MessageKind::kPurgeResults, {}, {wire::encode_ids(task_ids)}), "purged");
}

std::vector<std::string> Client::seal_violations() const {
  std::lock_guard lock(impl_->violations_mutex);
  return impl_->violations;
}

Client::Sealing Client::sealing() const { return {impl_->seals != nullptr, impl_->sealing_off_because}; }

StatusOr<std::vector<Client::SealingVerdict>> Client::sealing_check() {
  if (!impl_->seals) return failed_precondition("end-to-end sealing is off for this client: " + impl_->sealing_off_because);
  TESTUDO_ASSIGN_OR_RETURN(std::string list, impl_->control(wire::MessageKind::kEngineList));
  impl_->seals->learn(list);
  TESTUDO_ASSIGN_OR_RETURN(std::vector<EngineId> ids, engine_ids());
  std::vector<SealingVerdict> out;
  for (EngineId id : ids) {
    auto fingerprint = impl_->seals->verify(id);
    out.push_back({id, fingerprint.ok(), fingerprint.ok() ? *fingerprint : fingerprint.status().message()});
  }
  return out;
}

StatusOr<std::string> Client::key_admin(const std::string& action, const std::string& who) {
  nlohmann::json request{{"action", action}};
  if (!who.empty()) request["who"] = who;
  return impl_->control(wire::MessageKind::kKeyAdmin, {}, {}, request.dump());
}

}  // namespace testudo
