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
  // A streamed message is kept in `sent` as `first` (its rest in `streams`, by the same index).
  void send_streamed(wire::Message first, std::shared_ptr<net::OutgoingStream> rest) override {
    if (!open_) return rest->detach();
    sent.push_back(std::move(first));
    streams.emplace_back(sent.size() - 1, std::move(rest));
  }
  bool sending_stream() const override {
    for (const auto& [index, rest] : streams) {
      if (rest->state() == net::OutgoingStream::State::kOpen) return true;
    }
    return false;
  }
  std::vector<std::pair<std::size_t, std::shared_ptr<net::OutgoingStream>>> streams;
  std::uint64_t queued_bytes() const override { return queued; }
  std::uint64_t queued = 0;  // what queued_bytes() says: a test sets it to stand for a peer not reading
  bool send_now(const wire::Message& message) override {
    if (!open_) return false;
    sent.push_back(message);
    return true;
  }
  void close(const Status& reason) override {
    if (!open_) return;
    open_ = false;
    for (auto& [index, rest] : streams) rest->detach();
    close_reason = reason;
    auto on_close = std::move(handlers_.on_close);
    handlers_ = {};
    if (on_close) on_close(reason);
  }
  void close_after_flush(const Status& reason, std::chrono::milliseconds) override { close(reason); }
  bool is_open() const override { return open_; }
  void pause_reading(bool on) override { paused = on; }
  void offer_streams(std::uint64_t min_rest_bytes) override { stream_offers_from = min_rest_bytes; }
  std::uint64_t stream_offers_from = 0;
  // The peer's side of offer_streams: what on_stream_offer answers for `first`.
  std::shared_ptr<wire::StreamSink> offer(const wire::Message& first, std::span<const std::uint64_t> sizes) {
    if (!open_ || !handlers_.on_stream_offer) return nullptr;
    auto on_offer = handlers_.on_stream_offer;
    return on_offer(first, sizes);
  }
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
