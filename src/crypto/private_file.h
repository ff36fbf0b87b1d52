// Files that hold secrets (connection files, private keys): owner-only, checked on load.
// docs/threat-model.md T7: a key or connection file readable or writable by group/others is refused
// with a clear error naming the file, its mode and the fix. Thread-safe (no shared state).
#pragma once

#include <string>

#include "testudo/status.h"

namespace testudo::crypto {

// Creates `dir` and missing parents with mode 0700. If `dir` exists and is accessible by
// group/others, it is refused (kPermissionDenied) rather than silently changed, unless
// `fix_mode` is true, in which case it is chmod-ed to 0700.
Status ensure_private_dir(const std::string& dir, bool fix_mode = false);

// For a directory testudo keeps secrets in (an identity directory, a profile's security/):
// OK if it is a directory owned by this user with no group/other access; otherwise
// kPermissionDenied naming it and the fix (whoever can write there can swap a key or a
// connection file), or kNotFound. Creates nothing.
Status check_private_dir(const std::string& dir);

// Writes `contents` to `path` atomically: a temporary file created 0600 (O_EXCL) in the same
// directory, fsync, rename over `path`, fsync of the directory. A reader never sees a
// partial file, and the file is never visible with a looser mode.
Status write_private_file(const std::string& path, std::string_view contents);

// Reads a file that must be a regular file (not a symlink), owned by the effective user,
// with no permission bits for group/others. Otherwise kPermissionDenied, e.g.
//   "connection file /home/u/.testudo/.../controller-client.json has mode 0644, readable by
//    group/others; run: chmod 600 <path>"
// `what` names the file's role in that message ("connection file", "private key").
// Files larger than `max_bytes` are refused (kResourceExhausted).
StatusOr<std::string> read_private_file(const std::string& path, std::string_view what,
                                        std::size_t max_bytes = 1 << 20);

}  // namespace testudo::crypto
