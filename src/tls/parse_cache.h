// Parsed OpenSSL objects (private keys, certificates) by the SHA-256 of the PEM they came from.
// Why: OpenSSL 3's decoders cost a few hundred microseconds per parse, and a process parses the
// same few PEMs again and again — its own identity for every signature, the peers it talks to
// for every verification; that was most of the ~3.5 ms an end-to-end pair set-up took.
// What must hold: a cached object is shared read-only (OpenSSL 3 keys and certificates may be
// used by several threads at once, and nobody here modifies a parsed one); a hit hands out
// another reference (up_ref), so an evicted object lives on with whoever still holds it; only
// successful parses are kept. Bounded: the oldest entry goes first. A private key stays parsed
// no longer than its process keeps the PEM it came from in memory anyway (its identity).
// Internal to src/tls. Thread-safe.
#pragma once

#include <array>
#include <cstddef>
#include <list>
#include <memory>
#include <mutex>
#include <span>
#include <string_view>
#include <utility>

#include "crypto/crypto.h"

namespace testudo::tls::internal {

template <typename T, int (*UpRef)(T*), void (*Free)(T*)>
class ParseCache {
 public:
  struct Deleter {
    void operator()(T* p) const { Free(p); }
  };
  using Ptr = std::unique_ptr<T, Deleter>;

  explicit ParseCache(std::size_t capacity) : capacity_(capacity) {}

  using Key = std::array<std::byte, 32>;  // the SHA-256 of a PEM
  static Key key_of(std::string_view pem) { return crypto::sha256(std::as_bytes(std::span(pem.data(), pem.size()))); }

  // A new reference to the object parsed from the PEM whose key this is, or null.
  Ptr find(const Key& key) {
    std::lock_guard lock(mu_);
    for (auto it = entries_.begin(); it != entries_.end(); ++it) {
      if (it->first != key) continue;
      T* object = it->second.get();
      if (UpRef(object) != 1) return nullptr;
      entries_.splice(entries_.begin(), entries_, it);  // most recently used first
      return Ptr(object);
    }
    return nullptr;
  }

  // Keeps a reference to `object`, parsed from the PEM whose key this is.
  void keep(const Key& key, T* object) {
    if (UpRef(object) != 1) return;
    Ptr held(object);
    std::lock_guard lock(mu_);
    for (const auto& entry : entries_) {
      if (entry.first == key) return;  // another thread parsed it meanwhile
    }
    entries_.emplace_front(key, std::move(held));
    if (entries_.size() > capacity_) entries_.pop_back();
  }

 private:
  const std::size_t capacity_;
  std::mutex mu_;
  std::list<std::pair<Key, Ptr>> entries_;  // guarded by mu_
};

}  // namespace testudo::tls::internal
