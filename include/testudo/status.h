// Status and StatusOr<T>: the one error type of testudo.
// Errors from asio, OpenSSL and Python are converted into a Status where they enter.
// Values are cheap to move; an OK Status carries no allocation.
#pragma once

#include <cassert>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace testudo {

enum class Outcome : std::uint16_t;  // testudo/outcome.h

// Canonical codes, a subset of Abseil's with the same meanings.
enum class StatusCode {
  kOk = 0,
  kCancelled,
  kInvalidArgument,      // the caller's input is wrong (bad flag, bad file contents)
  kDeadlineExceeded,     // a timeout expired
  kNotFound,
  kAlreadyExists,
  kPermissionDenied,     // authentication or authorization refused, unsafe file mode
  kResourceExhausted,    // a size or rate limit was hit
  kFailedPrecondition,   // the system is not in a state to do it
  kAborted,
  kOutOfRange,
  kUnimplemented,
  kInternal,             // an invariant broke: a bug
  kUnavailable,          // the peer or connection is gone; retrying may help
  kDataLoss,             // malformed or truncated bytes
  // The peer did not prove who it is: a controller whose certificate does not match the pin.
  // Hostile (a local user who took the port) or stale; another try may reach the real one.
  kUnauthenticated,
};

std::string_view status_code_name(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}
  // An error that ends a request: `outcome` says precisely how (see outcome_status()).
  Status(StatusCode code, std::string message, Outcome outcome)
      : code_(code), message_(std::move(message)), outcome_(outcome) {}

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // The request outcome this error reports (testudo/outcome.h), when it reports one: the
  // client's errors for requests and control calls carry it; others do not.
  std::optional<Outcome> outcome() const { return outcome_; }
  // "PERMISSION_DENIED: connection file ... is readable by others"
  std::string to_string() const;

  // Returns a copy whose message is "context: message", for adding where an error passed.
  Status with_context(std::string_view context) const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
  std::optional<Outcome> outcome_;
};

inline Status ok_status() { return Status(); }
inline Status invalid_argument(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
inline Status permission_denied(std::string m) { return {StatusCode::kPermissionDenied, std::move(m)}; }
inline Status unauthenticated(std::string m) { return {StatusCode::kUnauthenticated, std::move(m)}; }
inline Status data_loss(std::string m) { return {StatusCode::kDataLoss, std::move(m)}; }
inline Status unavailable(std::string m) { return {StatusCode::kUnavailable, std::move(m)}; }
inline Status deadline_exceeded(std::string m) { return {StatusCode::kDeadlineExceeded, std::move(m)}; }
inline Status resource_exhausted(std::string m) { return {StatusCode::kResourceExhausted, std::move(m)}; }
inline Status not_found(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
inline Status already_exists(std::string m) { return {StatusCode::kAlreadyExists, std::move(m)}; }
inline Status failed_precondition(std::string m) { return {StatusCode::kFailedPrecondition, std::move(m)}; }
inline Status internal_error(std::string m) { return {StatusCode::kInternal, std::move(m)}; }

// Either a value or a non-OK Status. Accessing value() of an error is a bug (asserted).
template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(T value) : state_(std::move(value)) {}  // NOLINT: implicit by design
  StatusOr(Status status) : state_(std::move(status)) {  // NOLINT: implicit by design
    assert(!std::get<Status>(state_).ok() && "StatusOr built from an OK Status");
  }

  bool ok() const { return std::holds_alternative<T>(state_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(state_);
  }
  T& value() & { return std::get<T>(state_); }
  const T& value() const& { return std::get<T>(state_); }
  T&& value() && { return std::get<T>(std::move(state_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Status> state_;
};

}  // namespace testudo

// Return-if-error helpers, as in Abseil's internal macros.
#define TESTUDO_CONCAT_INNER_(a, b) a##b
#define TESTUDO_CONCAT_(a, b) TESTUDO_CONCAT_INNER_(a, b)

#define TESTUDO_RETURN_IF_ERROR(expr)          \
  do {                                         \
    ::testudo::Status _st = (expr);            \
    if (!_st.ok()) return _st;                 \
  } while (0)

#define TESTUDO_ASSIGN_OR_RETURN(lhs, expr) \
  TESTUDO_ASSIGN_OR_RETURN_IMPL_(TESTUDO_CONCAT_(_status_or_, __LINE__), lhs, expr)
#define TESTUDO_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                   \
  if (!tmp.ok()) return tmp.status();                  \
  lhs = std::move(tmp).value()
