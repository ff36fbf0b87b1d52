#include "wire/assembler.h"

#include <memory>
#include <mutex>
#include <numeric>
#include <string>
#include <utility>

namespace testudo::wire {

// Buffers for the parts of streamed messages, reused. A relay allocates one per frame (up to
// 1 MiB) and frees it once every receiver has written it; fresh heap pages for each (the
// allocator gives freed ones back to the kernel and takes them again) cost page faults worth
// about as much CPU as the relaying itself, measured. Parts may be released on any thread and
// after the assembler is gone: the pool lives as long as a part refers to it.
class PartBuffers : public std::enable_shared_from_this<PartBuffers> {
 public:
  static constexpr std::size_t kBytes = 1u << 20;
  static constexpr std::size_t kKept = 16;  // a relay window's worth (8 MiB) and some

  SharedBytes take(std::size_t size) {
    if (size > kBytes) return SharedBytes::allocate(size);
    std::unique_ptr<std::byte[]> buffer;
    {
      std::lock_guard lock(mutex_);
      if (!free_.empty()) {
        buffer = std::move(free_.back());
        free_.pop_back();
      }
    }
    if (!buffer) buffer = std::make_unique_for_overwrite<std::byte[]>(kBytes);
    std::byte* data = buffer.release();
    return SharedBytes::adopt(data, size, [self = shared_from_this(), data] { self->give_back(data); });
  }

 private:
  void give_back(std::byte* data) {
    std::unique_ptr<std::byte[]> buffer(data);
    std::lock_guard lock(mutex_);
    if (free_.size() < kKept) free_.push_back(std::move(buffer));
  }

  std::mutex mutex_;
  std::vector<std::unique_ptr<std::byte[]>> free_;
};

StatusOr<std::span<std::byte>> MessageAssembler::begin_frame(std::span<const std::byte, kFrameHeaderBytes> bytes) {
  if (current_ != nullptr) return failed_precondition("begin_frame before the previous frame ended");
  if (offering_) return failed_precondition("begin_frame before the streaming offer was answered");
  TESTUDO_ASSIGN_OR_RETURN(FrameHeader fh, decode_frame_header(bytes, limits_));
  if (fh.abandons) {
    // Only the message in progress may be abandoned, by an empty frame of its own.
    if (fh.type != FrameType::kData || fh.overtaking || fh.length != 0) {
      return data_loss("an abandoning frame must be an empty data frame of the message in progress");
    }
    if (!main_ || overtaker_) return data_loss("an abandoning frame outside a message in progress");
    current_ = &*main_;
    current_is_head_ = false;
    current_abandons_ = true;
    current_length_ = 0;
    return std::span<std::byte>{};
  }
  Assembly* to = nullptr;
  if (overtaker_) {
    // Only the overtaking message's own data frames until it is complete.
    if (!fh.overtaking) return data_loss("an overtaking message was cut by another frame");
    if (fh.type != FrameType::kData) return data_loss("a message head inside an overtaking message");
    to = &*overtaker_;
  } else if (main_) {
    if (fh.overtaking) {
      if (fh.type != FrameType::kHead) return data_loss("an overtaking data frame with no overtaking head");
      overtaker_.emplace();
      overtaker_->overtaking = true;
      to = &*overtaker_;
    } else {
      if (fh.type != FrameType::kData) return data_loss("a message head where a data frame was expected");
      to = &*main_;
    }
  } else {
    if (fh.overtaking) return data_loss("overtaking frame outside a message in progress");
    if (fh.type != FrameType::kHead) return data_loss("data frame where a message head was expected");
    main_.emplace();
    to = &*main_;
  }
  current_ = to;
  current_is_head_ = fh.type == FrameType::kHead;
  current_abandons_ = false;
  current_length_ = fh.length;
  if (current_is_head_) {
    to->head.resize(fh.length);
    return std::span<std::byte>(to->head);
  }
  // A data frame fills the segment being filled, never beyond its announced size.
  if (fh.length > to->sizes[to->segment] - to->filled) {
    current_ = nullptr;
    return data_loss("data frame does not match the announced segment size");
  }
  if (to->sink) {
    // Streamed: each frame is a part of its own, handed on whole once read.
    if (!part_buffers_) part_buffers_ = std::make_shared<PartBuffers>();
    to->chunk = part_buffers_->take(fh.length);
    return to->chunk.mutable_span();
  }
  return to->message.segments.back().mutable_span().subspan(to->filled, fh.length);
}

StatusOr<std::optional<Message>> MessageAssembler::end_frame() {
  if (current_ == nullptr) return failed_precondition("end_frame without a frame");
  Assembly& a = *std::exchange(current_, nullptr);
  if (current_abandons_) {
    current_abandons_ = false;
    if (a.sink) a.sink->abandon(data_loss("its sender abandoned the message before it was complete"));
    main_.reset();
    part_buffers_.reset();
    return std::optional<Message>{};
  }
  if (current_is_head_) {
    TESTUDO_ASSIGN_OR_RETURN(Head head, decode_head(a.head, limits_));
    a.head = {};
    if (a.overtaking && !may_overtake(head.envelope.kind)) {
      return data_loss("a '" + std::string(kind_name(head.envelope.kind)) + "' message may not overtake another");
    }
    a.message.envelope = std::move(head.envelope);
    a.sizes = std::move(head.segment_sizes);
    a.message.segments.reserve(a.sizes.size());
  } else {
    a.filled += current_length_;
    if (a.sink) a.sink->chunk(a.segment, std::move(a.chunk));
  }
  std::optional<Message> done = advance(a);
  if (done) {
    if (a.overtaking) {
      overtaker_.reset();
    } else {
      if (a.sink) {
        // Streamed: its sink had every part; nothing is handed out here. The buffer pool goes
        // with it (freed once its parts come back): a connection that streamed once does not
        // keep 16 MiB for the rest of its life.
        a.sink->end();
        done.reset();
        part_buffers_.reset();
      }
      main_.reset();
    }
  }
  return done;
}

void MessageAssembler::answer_offer(std::shared_ptr<StreamSink> sink) {
  if (!offering_) return;
  offering_ = false;
  main_->sink = std::move(sink);
  // Cannot complete the message: the offer was made because bytes are still to come.
  (void)advance(*main_);
}

void MessageAssembler::abandon_stream(const Status& why) {
  if (!main_ || !main_->sink) return;
  // Only the sink goes: the reader may still hold a span of the buffers.
  std::shared_ptr<StreamSink> sink = std::move(main_->sink);
  sink->abandon(why);
}

bool MessageAssembler::offers(const Assembly& a) const {
  if (stream_min_rest_ == 0 || a.overtaking || a.offered || a.segment != 1) return false;
  const std::uint64_t rest = std::accumulate(a.sizes.begin() + 1, a.sizes.end(), std::uint64_t{0});
  return rest >= stream_min_rest_;
}

std::optional<Message> MessageAssembler::advance(Assembly& a) {
  for (;;) {
    if (a.segment == a.sizes.size()) return std::move(a.message);
    if (offers(a)) {
      a.offered = true;
      offering_ = true;
      return std::nullopt;
    }
    // The size passed decode_head's limits. Pages are committed only as frames fill them. A
    // streamed segment has no buffer here: its frames each get their own (begin_frame).
    if (!a.sink && a.message.segments.size() == a.segment) {
      a.message.segments.push_back(SharedBytes::allocate(a.sizes[a.segment]));
    }
    if (a.filled < a.sizes[a.segment]) return std::nullopt;  // its data frames are to come
    ++a.segment;
    a.filled = 0;
  }
}

}  // namespace testudo::wire
