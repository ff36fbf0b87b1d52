#include "wire/assembler.h"

#include <string>
#include <utility>

namespace testudo::wire {

StatusOr<std::span<std::byte>> MessageAssembler::begin_frame(std::span<const std::byte, kFrameHeaderBytes> bytes) {
  if (current_ != nullptr) return failed_precondition("begin_frame before the previous frame ended");
  TESTUDO_ASSIGN_OR_RETURN(FrameHeader fh, decode_frame_header(bytes, limits_));
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
  current_length_ = fh.length;
  if (current_is_head_) {
    to->head.resize(fh.length);
    return std::span<std::byte>(to->head);
  }
  // A data frame fills the segment being filled, never beyond its announced size.
  SharedBytes& segment = to->message.segments.back();
  if (fh.length > segment.size() - to->filled) {
    current_ = nullptr;
    return data_loss("data frame does not match the announced segment size");
  }
  return segment.mutable_span().subspan(to->filled, fh.length);
}

StatusOr<std::optional<Message>> MessageAssembler::end_frame() {
  if (current_ == nullptr) return failed_precondition("end_frame without a frame");
  Assembly& a = *std::exchange(current_, nullptr);
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
  }
  std::optional<Message> done = advance(a);
  if (done) {
    if (a.overtaking) {
      overtaker_.reset();
    } else {
      main_.reset();
    }
  }
  return done;
}

std::optional<Message> MessageAssembler::advance(Assembly& a) {
  for (;;) {
    if (a.segment == a.sizes.size()) return std::move(a.message);
    // The size passed decode_head's limits. Pages are committed only as frames fill them.
    if (a.message.segments.size() == a.segment) a.message.segments.push_back(SharedBytes::allocate(a.sizes[a.segment]));
    if (a.filled < a.sizes[a.segment]) return std::nullopt;  // its data frames are to come
    ++a.segment;
    a.filled = 0;
  }
}

}  // namespace testudo::wire
