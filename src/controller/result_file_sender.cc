#include "controller/result_file_sender.h"

#include <algorithm>
#include <utility>

namespace testudo::controller {

Status ResultFileSender::send(net::Connection& to, wire::Envelope envelope, std::shared_ptr<const ResultFile> file,
                              std::uint64_t window, std::function<void(const Status&)> on_failed) {
  wire::Message first;
  first.envelope = std::move(envelope);
  const std::vector<std::uint64_t>& sizes = file->sizes();
  if (!sizes.empty()) {
    auto segment = file->read(0, static_cast<std::size_t>(sizes[0]));
    if (!segment.ok()) return segment.status();
    first.segments.push_back(std::move(segment).value());
  }
  auto out = std::make_shared<net::OutgoingStream>(sizes);
  auto sender = std::make_shared<ResultFileSender>(std::move(file), out, window, std::move(on_failed));
  to.send_streamed(std::move(first), std::move(out));
  sender->pump();
  return ok_status();
}

ResultFileSender::ResultFileSender(std::shared_ptr<const ResultFile> file, std::shared_ptr<net::OutgoingStream> out,
                                   std::uint64_t window, std::function<void(const Status&)> on_failed)
    : file_(std::move(file)), out_(std::move(out)), window_(std::make_shared<ByteWindow>()), on_failed_(std::move(on_failed)) {
  window_->limit = window;
  offset_ = file_->sizes().empty() ? 0 : file_->sizes()[0];
}

std::unique_ptr<std::byte[]> ResultFileSender::take_buffer() {
  if (free_.empty()) return std::make_unique_for_overwrite<std::byte[]>(wire::Limits{}.max_frame_bytes);
  std::unique_ptr<std::byte[]> buffer = std::move(free_.back());
  free_.pop_back();
  return buffer;
}

void ResultFileSender::pump() {
  const std::vector<std::uint64_t>& sizes = file_->sizes();
  const std::uint64_t frame = wire::Limits{}.max_frame_bytes;
  while (!out_->detached() && !window_->full()) {
    while (segment_ < sizes.size() && in_segment_ == sizes[segment_]) {
      ++segment_;
      in_segment_ = 0;
    }
    if (segment_ >= sizes.size()) {
      out_->finish();
      break;
    }
    // A frame belongs to one segment: never read across a segment's end.
    const auto length = static_cast<std::size_t>(std::min(frame, sizes[segment_] - in_segment_));
    std::unique_ptr<std::byte[]> buffer = take_buffer();
    if (Status read = file_->read_into(offset_, {buffer.get(), length}); !read.ok()) {
      out_->abandon();
      if (on_failed_) std::exchange(on_failed_, nullptr)(read);
      break;
    }
    offset_ += length;
    in_segment_ += length;
    window_->in_flight += length;
    std::byte* data = buffer.release();
    // Released once the connection's writer has encrypted it (or dropped it, closing): the
    // buffer comes back, the window opens and the next parts are read.
    out_->push(SharedBytes::adopt(data, length, [self = shared_from_this(), data, length] {
      self->free_.emplace_back(data);
      self->window_->release(length);
    }));
  }
  if (!out_->detached() && out_->state() == net::OutgoingStream::State::kOpen && window_->full()) {
    window_->on_room = [self = shared_from_this()] { self->pump(); };
  }
}

}  // namespace testudo::controller
