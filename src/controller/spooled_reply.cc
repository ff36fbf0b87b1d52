#include "controller/spooled_reply.h"

#include <utility>

namespace testudo::controller {

SpooledReply::SpooledReply(wire::Message first, std::shared_ptr<ResultSpool> spool, std::uint64_t window, Clock& clock,
                           std::function<void(SpooledReply&)> on_end, std::function<void(SpooledReply&)> on_abandon)
    : first_(std::move(first)),
      spool_(std::move(spool)),
      window_(std::make_shared<ByteWindow>()),
      clock_(clock),
      on_end_(std::move(on_end)),
      on_abandon_(std::move(on_abandon)) {
  window_->limit = window;
}

void SpooledReply::chunk(std::size_t, SharedBytes bytes) {
  if (over_) return;
  const std::uint64_t size = bytes.size();
  window_->in_flight += size;
  std::byte* data = bytes.data();
  // Released on the spool thread once written; the window is the loop's, so post it there.
  spool_->append(SharedBytes::adopt(data, size, [window = window_, keep = std::move(bytes), size, &clock = clock_]() mutable {
    keep = {};
    clock.post([window, size] { window->release(size); });
  }));
}

void SpooledReply::end() {
  if (over_) return;
  over_ = true;
  if (on_end_) std::exchange(on_end_, nullptr)(*this);
}

void SpooledReply::abandon(const Status&) {
  if (over_) return;
  over_ = true;
  spool_->abandon();
  if (on_abandon_) std::exchange(on_abandon_, nullptr)(*this);
}

}  // namespace testudo::controller
