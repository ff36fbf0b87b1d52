#include "e2e/roots.h"

namespace testudo::e2e {

StatusOr<Roots> Roots::make(const std::vector<std::string>& fingerprints, const std::string& ca_file) {
  Roots roots;
  for (const auto& fp : fingerprints) {
    constexpr std::string_view kPrefix = "sha256:";
    bool well_formed = fp.size() == kPrefix.size() + 64 && fp.starts_with(kPrefix);
    for (std::size_t i = kPrefix.size(); well_formed && i < fp.size(); ++i) {
      well_formed = (fp[i] >= '0' && fp[i] <= '9') || (fp[i] >= 'a' && fp[i] <= 'f');
    }
    if (!well_formed) {
      return invalid_argument("'" + fp.substr(0, 80) + "' is not a key fingerprint (sha256: and 64 lowercase hex digits; "
                              "`testudo keys fingerprint` prints one)");
    }
    roots.fingerprints_.insert(fp);
  }
  if (!ca_file.empty()) {
    TESTUDO_ASSIGN_OR_RETURN(tls::ChainVerifier verifier, tls::ChainVerifier::load(ca_file, ""));
    roots.ca_ = std::make_shared<const tls::ChainVerifier>(std::move(verifier));
  }
  return roots;
}

std::string Roots::describe() const {
  if (ca_ && !fingerprints_.empty()) return "CA and pinned";
  if (ca_) return "CA";
  return fingerprints_.empty() ? "none" : "pinned";
}

std::vector<std::string> split_pem_certificates(std::string_view chain_pem) {
  constexpr std::string_view kEnd = "-----END CERTIFICATE-----";
  std::vector<std::string> out;
  std::size_t from = 0;
  for (;;) {
    const std::size_t begin = chain_pem.find("-----BEGIN CERTIFICATE-----", from);
    if (begin == std::string_view::npos) break;
    const std::size_t end = chain_pem.find(kEnd, begin);
    if (end == std::string_view::npos) break;
    out.emplace_back(chain_pem.substr(begin, end + kEnd.size() - begin));
    out.back() += "\n";
    from = end + kEnd.size();
  }
  return out;
}

StatusOr<tls::CertificateFacts> Roots::check(std::string_view chain_pem, std::int64_t now_unix,
                                             std::string_view whom) const {
  const std::vector<std::string> chain = split_pem_certificates(chain_pem);
  if (chain.empty() || chain.size() > 8) return permission_denied(std::string(whom) + " presented no usable certificate");
  auto facts = tls::certificate_facts_of_pem(chain.front());
  if (!facts.ok()) return permission_denied(std::string(whom) + " presented a malformed certificate");
  if (Status valid = tls::check_validity_period(*facts, now_unix); !valid.ok()) {
    return permission_denied(std::string(whom) + ": " + valid.message());
  }
  if (fingerprints_.contains(facts->key_fingerprint)) return facts;
  if (ca_) {
    Status verified = ca_->verify(chain, now_unix);
    if (verified.ok()) return facts;
    return permission_denied(std::string(whom) + " " + facts->key_fingerprint.substr(0, 23) + "…: " + verified.message());
  }
  return permission_denied(std::string(whom) + " " + facts->key_fingerprint.substr(0, 23) +
                           "… is not among the keys this side trusts for end-to-end sealing (" + describe() + ")");
}

}  // namespace testudo::e2e
