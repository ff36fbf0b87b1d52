#include "controller/streamed_request.h"

namespace testudo::controller {

StreamedRequest::StreamedRequest(std::vector<std::uint64_t> sizes, std::uint64_t window,
                                 std::function<void(const Status&, const Tasks&)> on_abandon)
    : sizes_(std::move(sizes)), window_(std::make_shared<ByteWindow>()), on_abandon_(std::move(on_abandon)) {
  window_->limit = window;
}

bool StreamedRequest::forward_to(net::Connection& to, wire::Message first, std::uint64_t task, std::uint32_t engine) {
  if (parts_passed_ || over_) return false;
  auto out = std::make_shared<net::OutgoingStream>(sizes_);
  to.send_streamed(std::move(first), out);
  outs_.push_back(std::move(out));
  tasks_.emplace_back(task, engine);
  return true;
}

void StreamedRequest::chunk(std::size_t, SharedBytes bytes) {
  parts_passed_ = true;
  const std::uint64_t size = bytes.size();
  window_->in_flight += size;
  // The same bytes for every engine; the window is released when the last has written them.
  std::byte* data = bytes.data();
  SharedBytes counted = SharedBytes::adopt(data, size, [window = window_, keep = std::move(bytes), size]() mutable {
    keep = {};
    window->release(size);
  });
  for (const auto& out : outs_) out->push(counted);
}

void StreamedRequest::end() {
  over_ = true;
  for (const auto& out : outs_) out->finish();
}

void StreamedRequest::abandon(const Status& why) {
  if (over_) return;
  over_ = true;
  for (const auto& out : outs_) out->abandon();
  if (on_abandon_) on_abandon_(why, tasks_);
}

bool StreamedRequest::backlogged() const { return window_->full(); }

void StreamedRequest::when_room(std::function<void()> fn) { window_->when_room(std::move(fn)); }

}  // namespace testudo::controller
