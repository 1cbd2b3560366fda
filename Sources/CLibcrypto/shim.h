#ifndef C_LIBCRYPTO_SHIM_H
#define C_LIBCRYPTO_SHIM_H

// OpenSSL's libcrypto (Debian's libssl3), for the sha256 built-in handler's digest: EVP_Digest, not the SHA256()
// shortcut, which OpenSSL 3 deprecates.
#include <openssl/evp.h>

#endif
