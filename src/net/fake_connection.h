// A net::Connection for tests of what sits above the transport (the hub): no socket, no TLS.
// What is sent is kept in `sent`; the test plays the peer with deliver() and drop(). close()
// calls on_close at once, as the real connection does; close_after_flush() closes at once too
// (its messages were "written": they are in `sent`). Not thread-safe; send_now() records like
// send().
#pragma once

#include <array>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "net/net.h"

namespace testudo::testing {

class FakeConnection final : public net::Connection {
 public:
  explicit FakeConnection(std::string address = "192.0.2.1:40000") : address_(std::move(address)) {}

  // The peer's side.
  void deliver(wire::Message message) {
    if (!open_ || !handlers_.on_message) return;
    auto on_message = handlers_.on_message;  // the handler may close (and so clear) handlers_
    on_message(std::move(message));
  }
  void drop(const Status& why = unavailable("peer went away")) { close(why); }

  std::vector<wire::Message> sent;
  Status close_reason;
  bool started = false;
  wire::Limits limits = wire::Limits::pre_auth();
  // What peer_certificate() reports (kFailedPrecondition while unset).
  std::optional<tls::CertificateFacts> certificate;
  std::array<std::byte, 32> exporter{};  // every label and context gets this value

  // Messages of `kind` sent so far.
  std::vector<wire::Message> sent_of(wire::MessageKind kind) const {
    std::vector<wire::Message> out;
    for (const auto& m : sent) {
      if (m.envelope.kind == kind) out.push_back(m);
    }
    return out;
  }

  void start(Handlers handlers) override {
    started = true;
    handlers_ = std::move(handlers);
  }
  void set_handlers(Handlers handlers) override { handlers_ = std::move(handlers); }
  void send(wire::Message message) override {
    if (open_) sent.push_back(std::move(message));
  }
  bool send_now(const wire::Message& message) override {
    if (!open_) return false;
    sent.push_back(message);
    return true;
  }
  void close(const Status& reason) override {
    if (!open_) return;
    open_ = false;
    close_reason = reason;
    auto on_close = std::move(handlers_.on_close);
    handlers_ = {};
    if (on_close) on_close(reason);
  }
  void close_after_flush(const Status& reason, std::chrono::milliseconds) override { close(reason); }
  bool is_open() const override { return open_; }
  void pause_reading(bool on) override { paused = on; }
  bool paused = false;  // what pause_reading said last (deliver() ignores it)
  void set_limits(const wire::Limits& l) override { limits = l; }
  const std::string& peer_address() const override { return address_; }
  StatusOr<std::array<std::byte, 32>> export_keying_material(std::string_view, std::string_view) override {
    return exporter;
  }
  StatusOr<std::string> peer_fingerprint() override {
    if (!certificate) return failed_precondition("no certificate");
    return certificate->cert_fingerprint;
  }
  StatusOr<tls::CertificateFacts> peer_certificate() override {
    if (!certificate) return failed_precondition("no certificate");
    return *certificate;
  }
  StatusOr<std::vector<std::string>> peer_certificate_chain() override {
    if (!certificate) return failed_precondition("no certificate");
    return std::vector<std::string>{certificate->cert_pem};
  }
  std::uint64_t bytes_received() const override { return received_bytes; }
  // What bytes_received() says: a test advances it to stand for bytes of a message arriving.
  std::uint64_t received_bytes = 0;

 private:
  std::string address_;
  Handlers handlers_;
  bool open_ = true;
};

}  // namespace testudo::testing
