// testudo-hostile: the real `testudo` command line whose controller is compromised on purpose
// (docs/e2e-design.md "Tests"; docs/threat-model.md T9). Built for tests only, never
// installed. Its relay tap does to sealed traffic what a controller in an attacker's hands
// could: flip bits, replay a request, deliver one engine's request to another, rewrite the
// engine id, flip bits in replies, swap two replies, forge a reply in the clear. The test
// picks the attack by writing its name into the file $TESTUDO_HOSTILE_MODE_FILE (read on
// every message, so one cluster serves every attack; a missing file means "honest").
#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>
#include <string>

#include "controller/relay_tap.h"
#include "wire/body.h"
#include "wire/reply.h"

namespace testudo::cli {
int main(int argc, char** argv);
}

namespace {

using testudo::SharedBytes;
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

class HostileTap : public testudo::controller::RelayTap {
 public:
  std::vector<Message> to_engine(Message& task) override {
    if (!task.envelope.sealed()) return {};
    const std::string mode = current_mode();
    if (mode == "flip-request") flip_last_byte(task);
    if (mode == "replay-request") return {task};
    if (mode == "retarget-id") task.envelope.engine_id += 1000;
    if (mode == "swap-targets") {
      // The part sealed for the engine of the previous sealed task goes to this one instead.
      if (last_request_ && last_request_->envelope.engine_id != task.envelope.engine_id) {
        Message stolen = *last_request_;
        task.segments = stolen.segments;
      }
      last_request_ = task;
    }
    return {};
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
};

}  // namespace

int main(int argc, char** argv) {
  testudo::controller::install_relay_tap(std::make_unique<HostileTap>());
  return testudo::cli::main(argc, argv);
}
