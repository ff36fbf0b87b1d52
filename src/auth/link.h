// The one connection a client or an engine keeps to its controller: dial and hello
// (open_session), redial with backoff after a loss, heartbeats, and what a failure means.
//
//   ControllerLink link(loop, options, {.on_welcome = ..., .on_connected = ...,
//                                       .on_message = ..., .on_lost = ..., .on_stopped = ...});
//   loop.post([&] { link.start(); });
//
// What a failed attempt (dial, TLS, hello) leads to, by its code:
//   kFailedPrecondition  reachable, but this identity is not trusted yet: an administrator may
//                        change that, so retry (warned once per wait, not per attempt) and do
//                        not count the wait towards give_up: the controller is there.
//   kUnauthenticated     a listener whose certificate does not match the pin: hostile (a local
//                        user who took the port while the controller restarts) or stale. Never
//                        trusted, never final: warned loudly (at once, then once a minute with a
//                        count) and retried with backoff until the real controller answers or
//                        give_up passes (it counts: the controller was not seen).
//   kPermissionDenied    a wrong capability, a revoked key (said by the pinned controller
//                        itself): retrying cannot help; the link stops and on_stopped says why.
//   anything else        retry after the next backoff delay.
// A login that expires (a token: LoginClient::expires_at) is renewed on the welcomed connection
// shortly before it does (LoginClient::renew, sent as a kLoginStep; the controller answers with
// an empty kLoginStep or closes). If it cannot be renewed the controller closes the connection
// at expiry and the link redials, logging in afresh (the provider is asked again).
// A connection lost after its welcome is always redialed. Before every redial, give_up
// (when set) is checked against the time since the controller was last seen: the end of the
// last connection, the last not-trusted-yet answer, or start().
// The first attempt follows the same rules unless retry_first_attempt is false: then its
// failure, whatever it is, stops the link and goes to on_stopped unclassified, so that a
// caller (Client::connect) can report it as it is.
//
// Resend rules (the contract between the link and its owner):
//   * Nothing is queued while the link is down and nothing is resent after a redial: send()
//     on a link without a welcomed connection drops the message and returns false, and the
//     owner decides (the client fails that request at once with its loss reason; the engine
//     drops the reply, whose task the controller has already failed to its client when the
//     connection went). A resend could run a task twice; a request is never replayed.
//   * Work in flight when a connection drops is the owner's to settle, in on_lost, which runs
//     before anything is redialed (the client fails its pending requests with a
//     connection-lost error, their results stay fetchable by task id; the engine interrupts
//     the task it runs).
//   * A message sent before a drop may or may not have reached the controller: send() only
//     queues it on the connection.
//   * After a redial the controller sees a new hello with the same instance id (an engine gets
//     its engine id back) and on_welcome runs again before anything else is sent.
//
// Threading: a link belongs to one EventLoop. Everything but current_connection() runs on the
// loop's thread, and so do the hooks. Hooks may call send() and stop(), never destroy the link.
// Destroy the link on the loop's thread or after the loop has stopped running; that closes
// its connection without running any hook. An attempt in flight then (or at stop()) finishes
// on its own, within the session timeout, and its connection is closed at once.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "auth/session.h"
#include "base/log.h"
#include "net/net.h"
#include "testudo/status.h"
#include "wire/message.h"

namespace testudo::auth {

// Uniformly distributed 64-bit values: the jitter of the backoff. Tests hand in fixed ones.
using RandomSource = std::function<std::uint64_t()>;
// A source seeded from std::random_device (not for secrets: it only spreads redials).
RandomSource default_random_source();

// Delays between redials: the n-th delay since the last reset is uniform in [d, 1.5 d] with
// d = min(initial * 2^n, max), so a restarted controller is not stampeded by every peer at
// once. Not thread-safe.
class Backoff {
 public:
  Backoff(std::chrono::milliseconds initial, std::chrono::milliseconds max, RandomSource random);
  std::chrono::milliseconds next();
  void reset();  // after a success: the next delay is about `initial` again

 private:
  std::chrono::milliseconds initial_;
  std::chrono::milliseconds max_;
  std::chrono::milliseconds base_;
  RandomSource random_;
};

struct LinkOptions {
  // Who to dial and as whom. session.instance goes into every hello, so the controller sees
  // one peer across redials; session.timeout bounds each attempt (dial + TLS + welcome).
  SessionOptions session;
  // Redial delays (see Backoff): from initial_backoff, doubling to max_backoff, plus jitter.
  std::chrono::milliseconds initial_backoff{100};
  std::chrono::milliseconds max_backoff{5'000};
  RandomSource random;  // unset: default_random_source()
  // Heartbeats: 0 = none. Else a kHeartbeat every heartbeat_interval while connected, and
  // when nothing (an ack or any other message) has come from the controller for
  // controller_timeout, the connection is closed as lost ("stopped answering") and redialed.
  std::chrono::milliseconds heartbeat_interval{0};
  std::chrono::milliseconds controller_timeout{10'000};
  // Stop with kUnavailable when a redial is due this long after the controller was last seen
  // (see the top of this file). Unset: redial for ever.
  std::optional<std::chrono::milliseconds> give_up;
  // See the top of this file: false makes the first attempt's failure final.
  bool retry_first_attempt = true;
  // Log lines go to this subsystem; "reconnecting in N ms (why)" at retry_log_level.
  std::string log_name = "link";
  log::Level retry_log_level = log::Level::kInfo;
};

struct LinkHooks {
  // After every welcome, before the connection is used for anything else: e.g. the engine's
  // signed registration (auth/registration.h), which needs this session's exporter. An error
  // closes the connection and counts as a failed attempt (classified as above). Optional.
  std::function<Status(net::Connection& connection, std::uint32_t assigned_id)> on_welcome;
  // The link is up; `assigned_id` is the engine or client id of this connection.
  std::function<void(std::uint32_t assigned_id)> on_connected;
  // Every message from the controller after the welcome, except heartbeat acks. Messages a
  // controller may not send (wire::is_allowed_after_auth) close the connection instead.
  std::function<void(wire::Message&& message)> on_message;
  // The welcomed connection is gone (also when stop() closed it; `why` is then stop's). Runs
  // once per on_connected, before any redial: settle the work in flight here.
  std::function<void(const Status& why)> on_lost;
  // The link gave up for good (permission denied, give_up passed, or a failed first attempt
  // with retry_first_attempt false). Never runs for stop().
  std::function<void(const Status& why)> on_stopped;
};

class ControllerLink {
 public:
  ControllerLink(net::EventLoop& loop, LinkOptions options, LinkHooks hooks);
  ~ControllerLink();
  ControllerLink(const ControllerLink&) = delete;
  ControllerLink& operator=(const ControllerLink&) = delete;

  // Dials now. Call once.
  void start();
  // No more dialing and no more hooks but on_lost for the connection it closes: cancels the
  // backoff and the heartbeats, and closes the connection, at once or after its queued
  // messages are written (up to `flush_grace`). `on_closed` runs once the link holds no
  // connection: at once if it holds none. May be called again (e.g. to add an on_closed).
  void stop(const Status& why, std::chrono::milliseconds flush_grace = {}, std::function<void()> on_closed = {});

  // Queues `message` on the welcomed connection; false (and the message dropped) when there
  // is none, see the resend rules above.
  bool send(wire::Message message);
  bool connected() const;  // a welcomed connection is open and the link is not stopped
  bool stopped() const;
  std::uint32_t assigned_id() const;  // of the latest welcome; 0 before the first
  // The largest message the controller accepts (the latest welcome's terms; the protocol's
  // limit before the first). Thread-safe: a caller checks a message against it before
  // handing it to the link.
  std::uint64_t max_message_bytes() const;

  // Thread-safe: the welcomed connection, or null while the link is down or stopped. Only for
  // Connection::send_now from another thread (read its ordering rule in net.h); set after
  // on_welcome has queued its messages, cleared before on_lost runs.
  std::shared_ptr<net::Connection> current_connection() const;

  struct Core;

 private:
  std::shared_ptr<Core> core_;  // shared: in-flight attempts and connection handlers hold it weakly
};

}  // namespace testudo::auth
