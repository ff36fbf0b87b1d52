// The client side of joining a controller, shared by clients and engines:
//   dial (TLS 1.3, controller pinned by fingerprint) -> send hello with the capability proof
//   (and a login's first message) -> the login's steps, if any -> wait for welcome (or rejected).
// The explicit welcome matters: with TLS 1.3 a refused peer's handshake still "succeeds"
// on its side (docs/security.md, "Joining a cluster"), so only the welcome says we are in.
// Threading: call from any thread; `done` runs on the loop's thread.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "auth/connection_file.h"
#include "auth/login.h"
#include "net/net.h"
#include "tls/tls.h"
#include "wire/message.h"

namespace testudo::auth {

struct Session {
  std::shared_ptr<net::Connection> connection;  // started; set its handlers with set_handlers()
  std::uint32_t assigned_id = 0;                // engine id or client id
  // The login this session made, if any: the link renews it before it expires (login.h).
  std::shared_ptr<LoginClient> login;
  // The largest message the controller accepts from this peer (its welcome's terms).
  std::uint64_t max_message_bytes = wire::Limits{}.max_message_bytes;
};

struct SessionOptions {
  ConnectionInfo controller;
  // The TLS identity to present; unset: a fresh self-signed one for this session.
  std::optional<tls::KeyAndCertificate> identity;
  std::string instance;  // see Hello::instance
  std::chrono::milliseconds timeout{10'000};  // dial + handshake + login + welcome
  // Clients: makes the login of one session (login.h), called once per session (a reconnect
  // logs in again). Unset: the key presented in TLS is the identity.
  std::function<StatusOr<std::unique_ptr<LoginClient>>()> login;
};

void open_session(net::EventLoop& loop, const SessionOptions& options, std::function<void(StatusOr<Session>)> done);

}  // namespace testudo::auth
