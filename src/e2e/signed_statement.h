// The bytes e2e/ signs with identity keys (engine seal statements, pair offers, result-key
// grants): a context string naming the statement and its version, then its fields. Text
// fields (fingerprints) end with a 0 byte, which they cannot contain; binary fields are of
// fixed size and follow as they are. Each statement's layout is fixed by its context string,
// so a signature made for one kind of statement never verifies as another.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <string_view>

namespace testudo::e2e {

class SignedStatement {
 public:
  explicit SignedStatement(std::string_view context) { text(context); }
  SignedStatement& text(std::string_view field) {
    out_.append(field);
    out_.push_back('\0');
    return *this;
  }
  SignedStatement& bytes(std::span<const std::byte> field) {
    out_.append(reinterpret_cast<const char*>(field.data()), field.size());
    return *this;
  }
  const std::string& str() const { return out_; }

 private:
  std::string out_;
};

}  // namespace testudo::e2e
