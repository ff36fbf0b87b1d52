// testudo-hostile: the real `testudo` command line whose controller is compromised on purpose
// (docs/e2e-design.md "Tests"; docs/threat-model.md T9). Built for tests only, never
// installed. Its relay tap does to sealed traffic what a controller in an attacker's hands
// could: flip bits, replay a request, deliver one engine's request to another, rewrite the
// engine id, flip bits in replies, swap two replies, forge a reply in the clear, hand a
// balanced request to a second engine and pass both answers on, flip bits in the bodies and
// results it splices on data connections (the bulk path). The test
// picks the attack by writing its name into the file $TESTUDO_HOSTILE_MODE_FILE (read on
// every message, so one cluster serves every attack; a missing file means "honest").
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "controller/relay_tap.h"
#include "e2e/sealed_body.h"
#include "wire/body.h"
#include "wire/reply.h"

namespace testudo::cli {
int main(int argc, char** argv);
}

namespace {

using testudo::SharedBytes;
using testudo::controller::RelayTap;
using testudo::wire::Message;
using testudo::wire::MessageKind;

std::string current_mode() {
  const char* file = std::getenv("TESTUDO_HOSTILE_MODE_FILE");
  if (file == nullptr) return {};
  std::ifstream in(file);
  std::string mode;
  std::getline(in, mode);
  return mode;
}

// Segments are shared with the task store and other copies: change a copy.
void flip_last_byte(Message& m) {
  if (m.segments.empty() || m.segments.back().empty()) return;
  SharedBytes changed = SharedBytes::copy_of(m.segments.back().span());
  changed.mutable_span()[changed.size() - 1] ^= std::byte{0x01};
  m.segments.back() = changed;
}

bool looks_sealed_reply(const Message& m) {
  return m.envelope.kind == MessageKind::kTaskReply &&
         (m.envelope.outcome() == testudo::Outcome::kOk || m.envelope.outcome() == testudo::Outcome::kPythonError) &&
         !m.segments.empty() && m.segments[0].view().starts_with("TSE1");
}

bool is_balanced_request(const Message& m) {
  if (!m.envelope.sealed() || m.segments.empty()) return false;
  auto header = testudo::e2e::decode_seal_header(m.segments[0].span());
  return header.ok() && header->part == testudo::e2e::Part::kBalancedRequest;
}

class HostileTap : public RelayTap {
 public:
  std::vector<ToEngine> to_engine(Message& task, const Dispatch& dispatch) override {
    if (!task.envelope.sealed()) return {};
    const std::string mode = current_mode();
    if (mode == "flip-request") flip_last_byte(task);
    if (mode == "replay-request") return {{task.envelope.engine_id, task}};
    if (mode == "retarget-id") task.envelope.engine_id += 1000;
    if (mode == "swap-targets") {
      // The part sealed for the engine of the previous sealed task goes to this one instead.
      if (last_request_ && last_request_->envelope.engine_id != task.envelope.engine_id) {
        Message stolen = *last_request_;
        task.segments = stolen.segments;
      }
      last_request_ = task;
    }
    if (mode == "duplicate-balanced" && is_balanced_request(task)) {
      // Any other engine holding the client's balanced key opens it too and runs it again;
      // its answer (a task it was not given) is passed to the client as well (stray_reply).
      for (std::uint32_t other : dispatch.engines) {
        if (other == task.envelope.engine_id) continue;
        duplicated_[task.envelope.task_id] = {task.envelope.client_id, dispatch.request_id};
        Message copy = task;
        copy.envelope.engine_id = other;
        return {{other, std::move(copy)}};
      }
    }
    return {};
  }

  std::optional<std::pair<std::uint32_t, Message>> stray_reply(Message& reply) override {
    auto it = duplicated_.find(reply.envelope.task_id);
    if (it == duplicated_.end()) return std::nullopt;
    const auto [client, request] = it->second;
    duplicated_.erase(it);
    return std::make_pair(client, testudo::wire::task_reply(reply.envelope.outcome(),
                                                            {.request_id = request,
                                                             .task_id = reply.envelope.task_id,
                                                             .engine_id = reply.envelope.engine_id,
                                                             .client_id = client},
                                                            {}, reply.segments));
  }

  // The bytes of sealed bodies and results on data connections (the bulk path), which the
  // controller splices: one bit flipped in each.
  // "flip-bulk": request bodies and results on their way into the store; "flip-bulk-out":
  // results on their way out of it (one flip each, or the two would cancel out).
  bool tamper_bulk(BulkTransfer what) override {
    const std::string mode = current_mode();
    return what == BulkTransfer::kResultToClient ? mode == "flip-bulk-out" : mode == "flip-bulk";
  }

  void to_client(Message& m) override {
    if (!looks_sealed_reply(m)) return;
    const std::string mode = current_mode();
    if (mode == "flip-reply") flip_last_byte(m);
    if (mode == "forge-reply") {
      testudo::wire::ReplyMeta meta;
      meta.ok = true;
      m.segments = {testudo::wire::encode_reply_meta(meta), SharedBytes::copy_of(std::string_view("forged\n")),
                    SharedBytes{}, SharedBytes::copy_of(std::string_view(R"({"execution_count": 1})"))};
      m.envelope.set_outcome(testudo::Outcome::kOk);
    }
    if (mode == "swap-replies") {
      // This reply leaves with the body of the previous one (another engine's, or another
      // request's), the previous body is kept for the next.
      if (last_reply_ && last_reply_->envelope.engine_id != m.envelope.engine_id) {
        auto body = last_reply_->segments;
        last_reply_ = m;
        m.segments = std::move(body);
      } else {
        last_reply_ = m;
      }
    }
  }

 private:
  std::optional<Message> last_request_;
  std::optional<Message> last_reply_;
  std::map<std::uint64_t, std::pair<std::uint32_t, std::uint64_t>> duplicated_;  // task -> (client, request)
};

}  // namespace

int main(int argc, char** argv) {
  testudo::controller::install_relay_tap(std::make_unique<HostileTap>());
  return testudo::cli::main(argc, argv);
}
