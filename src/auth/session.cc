#include "auth/session.h"

#include "crypto/private_file.h"
#include "wire/control.h"
#include "tls/tls.h"

namespace testudo::auth {

void open_session(net::EventLoop& loop, const SessionOptions& options, std::function<void(StatusOr<Session>)> done) {
  // Until identities exist (a later layer), each process presents a fresh self-signed
  // certificate: TLS stays mutual, and the capability proof decides admission.
  auto identity = options.identity
                      ? StatusOr<tls::KeyAndCertificate>(*options.identity)
                      : tls::generate_self_signed(std::string("testudo-") + std::string(wire::role_name(options.controller.role)));
  if (!identity.ok()) {
    loop.post([done, st = identity.status()] { done(st); });
    return;
  }
  net::DialOptions dial;
  dial.host = options.controller.host;
  dial.port = options.controller.port;
  dial.tls.identity = std::move(identity).value();
  dial.tls.pinned_fingerprint = options.controller.fingerprint;
  dial.timeout = options.timeout;
  auto shared_done = std::make_shared<std::function<void(StatusOr<Session>)>>(std::move(done));
  net::dial(loop, dial, [&loop, options, shared_done](StatusOr<std::shared_ptr<net::Connection>> dialed) {
    if (!dialed.ok()) return (*shared_done)(dialed.status());
    std::shared_ptr<net::Connection> conn = std::move(dialed).value();
    const wire::Role role = options.controller.role;
    auto exporter = conn->export_keying_material(kExporterLabel, wire::role_name(role));
    if (!exporter.ok()) {
      conn->close(exporter.status());
      return (*shared_done)(exporter.status());
    }
    Hello hello{role, options.instance, capability_proof(options.controller.capability, role, *exporter)};
    std::shared_ptr<LoginClient> login;
    if (options.login) {
      auto made = options.login();
      auto binding = conn->export_keying_material(kChannelBindingLabel, "");
      Status failed = !made.ok() ? made.status() : binding.status();
      if (failed.ok()) {
        login = std::move(made).value();
        auto first = login->start(*binding);
        if (first.ok()) {
          hello.login = login->method();
          hello.login_message = std::move(first).value();
        } else {
          failed = first.status();
        }
      }
      if (!failed.ok()) {
        conn->close(failed);
        return (*shared_done)(failed);
      }
    }
    // `finish` runs exactly once: on welcome, rejection, close or timeout. The handlers hold
    // the connection only weakly: the connection owns them, and a strong reference would be
    // a cycle that leaks it whenever its loop stops before the close completes.
    auto finished = std::make_shared<bool>(false);
    std::weak_ptr<net::Connection> weak = conn;
    auto finish = [shared_done, finished, weak](StatusOr<Session> result) {
      if (*finished) return;
      *finished = true;
      if (!result.ok()) {
        if (auto c = weak.lock()) c->close(result.status());
      }
      (*shared_done)(std::move(result));
    };
    auto deadline = std::shared_ptr<net::Timer>(loop.after(options.timeout, [finish] {
      finish(deadline_exceeded("the controller did not answer the hello in time"));
    }));
    conn->start({
        [finish, weak, deadline, role, login](wire::Message&& m) {
          if (m.envelope.kind == wire::MessageKind::kLoginStep && login) {
            auto c = weak.lock();
            if (!c) return finish(unavailable("connection closed during the login"));
            auto answer = login->step(m.envelope.text);
            if (!answer.ok()) return finish(permission_denied("login failed: " + answer.status().message()));
            if (*answer) {
              wire::Message next;
              next.envelope.kind = wire::MessageKind::kLoginStep;
              next.envelope.text = std::move(**answer);
              c->send(std::move(next));
            }
            return;
          }
          deadline->cancel();
          if (m.envelope.kind == wire::MessageKind::kWelcome) {
            auto c = weak.lock();
            if (!c) return finish(unavailable("connection closed during authentication"));
            if (login) {
              // The controller must have proved itself to the login too (e.g. SCRAM's server
              // signature): a welcome alone does not finish it.
              if (Status done = login->finished(); !done.ok()) {
                return finish(permission_denied("login failed: " + done.message()));
              }
            }
            auto terms = wire::decode_welcome_terms(m.envelope.text);
            if (!terms.ok()) return finish(data_loss("welcome from the controller: " + terms.status().message()));
            return finish(Session{c, role == wire::Role::kEngine ? m.envelope.engine_id : m.envelope.client_id,
                                  login, terms->max_message_bytes});
          }
          if (m.envelope.kind == wire::MessageKind::kRejected) {
            const std::string why = "the controller refused this connection: " + m.envelope.text;
            // Not trusted yet: kFailedPrecondition, so that an engine can wait for an
            // administrator (Client::connect reports it as permission denied).
            if (m.envelope.outcome() == Outcome::kAwaitingTrust) {
              return finish(failed_precondition(why));
            }
            // A controller on its way out: worth another try later (the next one may be up).
            if (m.envelope.outcome() == Outcome::kShuttingDown) {
              return finish(unavailable(why));
            }
            return finish(permission_denied(why));
          }
          finish(data_loss("unexpected first message from the controller: " + std::string(wire::kind_name(m.envelope.kind))));
        },
        [finish](const Status& reason) {
          finish(Status(reason.code(), "connection closed during authentication: " + reason.message()));
        },
    });
    wire::Message m;
    m.envelope.kind = wire::MessageKind::kHello;
    m.envelope.text = encode_hello(hello);
    conn->send(std::move(m));
  });
}

}  // namespace testudo::auth
