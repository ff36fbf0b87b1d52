#!/bin/sh
# OpenSSL is private to src/tls and src/crypto: no other source file of the product includes
# an OpenSSL header (tests of tls/ and crypto/, the security tests' certificate reader and the
# cipher micro-benchmark may). Prints the offenders and fails if there are any.
cd "$(dirname "$0")/../.." || exit 2
offenders=$(grep -rlE '#include <openssl/' src include python | grep -vE '^src/(tls|crypto)/')
if [ -n "$offenders" ]; then
  echo "OpenSSL included outside src/tls and src/crypto:"
  echo "$offenders"
  exit 1
fi
echo "OpenSSL headers only in src/tls and src/crypto"
