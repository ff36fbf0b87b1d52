#include "crypto/private_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string_view>

#include "crypto/crypto.h"

namespace testudo::crypto {
namespace {

std::string errno_text(int err) { return std::strerror(err); }

std::string octal_mode(mode_t mode) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(mode & 07777));
  return buf;
}

// "readable by group/others", "readable, writable by group/others", ...
std::string loose_bits_text(mode_t mode) {
  std::string out;
  auto add = [&out](std::string_view word) {
    if (!out.empty()) out += ", ";
    out += word;
  };
  if (mode & 044) add("readable");
  if (mode & 022) add("writable");
  if (mode & 011) add("executable");
  return out + " by group/others";
}

// Closes a file descriptor on scope exit unless released.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }
  // Closes now and reports close()'s error (it can carry a delayed write error).
  int close() {
    const int fd = fd_;
    fd_ = -1;
    return ::close(fd);
  }

 private:
  int fd_;
};

Status errno_status(int err, std::string what) {
  what += ": " + errno_text(err);
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return not_found(std::move(what));
    case EACCES:
    case EPERM:
    case ELOOP:
      return permission_denied(std::move(what));
    case ENOSPC:
    case EDQUOT:
      return resource_exhausted(std::move(what));
    case EROFS:
      return failed_precondition(std::move(what));
    default:
      return unavailable(std::move(what));
  }
}

Status write_all(int fd, std::string_view data, const std::string& path) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno_status(errno, "cannot write " + path);
    }
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return ok_status();
}

std::string dir_of(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace

Status ensure_private_dir(const std::string& dir, bool fix_mode) {
  if (dir.empty()) return invalid_argument("private directory path is empty");

  // mkdir -p, one component at a time; components created here get exactly 0700 (mkdir's
  // mode is narrowed by the umask, which can only remove bits, then chmod sets it).
  bool created_last = false;
  std::size_t pos = 0;
  while (pos < dir.size()) {
    std::size_t next = dir.find('/', pos);
    if (next == std::string::npos) next = dir.size();
    if (next == pos) {  // leading or repeated '/'
      ++pos;
      continue;
    }
    const std::string prefix = dir.substr(0, next);
    pos = next + 1;
    created_last = false;
    if (::mkdir(prefix.c_str(), 0700) == 0) {
      if (::chmod(prefix.c_str(), 0700) != 0) {
        return errno_status(errno, "cannot chmod 700 new directory " + prefix);
      }
      created_last = true;
      continue;
    }
    const int err = errno;
    struct stat st {};
    if (err == EEXIST && ::stat(prefix.c_str(), &st) == 0) {
      if (!S_ISDIR(st.st_mode)) {
        return failed_precondition(prefix + " exists and is not a directory");
      }
      continue;
    }
    return errno_status(err, "cannot create directory " + prefix);
  }
  if (created_last) return ok_status();

  // The directory already existed: it must be ours and closed to group/others. With
  // fix_mode, a loose mode on a directory of ours is tightened first instead of refused.
  struct stat st {};
  if (fix_mode && ::stat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == ::geteuid() &&
      (st.st_mode & 077) != 0 && ::chmod(dir.c_str(), 0700) != 0) {
    return errno_status(errno, "cannot chmod 700 directory " + dir);
  }
  return check_private_dir(dir);
}

Status check_private_dir(const std::string& dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) return errno_status(errno, "cannot stat directory " + dir);
  if (!S_ISDIR(st.st_mode)) return failed_precondition(dir + " exists and is not a directory");
  if (st.st_uid != ::geteuid()) {
    return permission_denied("directory " + dir + " is owned by uid " + std::to_string(st.st_uid) +
                             ", not by the current user (uid " + std::to_string(::geteuid()) +
                             "); use a directory you own");
  }
  if ((st.st_mode & 077) != 0) {
    return permission_denied("directory " + dir + " has mode " + octal_mode(st.st_mode) + ", " +
                             loose_bits_text(st.st_mode) + "; run: chmod 700 " + dir);
  }
  return ok_status();
}

Status write_private_file(const std::string& path, std::string_view contents) {
  if (path.empty()) return invalid_argument("private file path is empty");
  if (path.back() == '/') return invalid_argument("private file path " + path + " names a directory");

  std::array<std::byte, 8> nonce;
  TESTUDO_RETURN_IF_ERROR(fill_random(nonce));
  const std::string dir = dir_of(path);
  const std::string base = path.substr(path.find_last_of('/') + 1);  // npos + 1 == 0
  const std::string tmp = (dir == "/" ? "" : dir) + "/." + base + ".tmp-" + to_hex(nonce);

  Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (fd.get() < 0) return errno_status(errno, "cannot create temporary file " + tmp);

  // From here on the temporary file exists: remove it on any failure.
  auto fail = [&tmp](Status st) {
    ::unlink(tmp.c_str());
    return st;
  };
  if (::fchmod(fd.get(), 0600) != 0) return fail(errno_status(errno, "cannot chmod 600 " + tmp));
  if (Status st = write_all(fd.get(), contents, tmp); !st.ok()) return fail(std::move(st));
  if (::fsync(fd.get()) != 0) return fail(errno_status(errno, "cannot fsync " + tmp));
  if (fd.close() != 0) return fail(errno_status(errno, "cannot close " + tmp));
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    return fail(errno_status(errno, "cannot rename " + tmp + " to " + path));
  }

  // Make the rename itself durable.
  Fd dir_fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir_fd.get() < 0) return errno_status(errno, "cannot open directory " + dir + " to fsync it");
  if (::fsync(dir_fd.get()) != 0) return errno_status(errno, "cannot fsync directory " + dir);
  return ok_status();
}

StatusOr<std::string> read_private_file(const std::string& path, std::string_view what,
                                        std::size_t max_bytes) {
  const std::string name = std::string(what) + " " + path;
  // O_NOFOLLOW refuses a symlink as the last component; O_NONBLOCK keeps a FIFO planted at
  // the path from blocking the open (it is then refused as not a regular file).
  Fd fd(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK));
  if (fd.get() < 0) {
    const int err = errno;
    if (err == ELOOP) {
      return permission_denied(name + " is a symbolic link; refusing to follow it");
    }
    return errno_status(err, "cannot open " + name);
  }
  // Checks run on the opened descriptor, so the file read is the file checked.
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return errno_status(errno, "cannot stat " + name);
  if (!S_ISREG(st.st_mode)) return permission_denied(name + " is not a regular file");
  if (st.st_uid != ::geteuid()) {
    return permission_denied(name + " is owned by uid " + std::to_string(st.st_uid) +
                             ", not by the current user (uid " + std::to_string(::geteuid()) + ")");
  }
  if ((st.st_mode & 077) != 0) {
    return permission_denied(name + " has mode " + octal_mode(st.st_mode) + ", " +
                             loose_bits_text(st.st_mode) + "; run: chmod 600 " + path);
  }
  if (st.st_size < 0 || static_cast<unsigned long long>(st.st_size) > max_bytes) {
    return resource_exhausted(name + " is " + std::to_string(st.st_size) +
                              " bytes, more than the limit of " + std::to_string(max_bytes));
  }

  std::string out;
  out.resize(static_cast<std::size_t>(st.st_size));
  std::size_t have = 0;
  // Reads until EOF; a file that grows past the limit while being read is refused too.
  for (;;) {
    if (have == out.size()) {
      if (out.size() > max_bytes) break;
      out.resize(std::min(max_bytes, out.size() + 4095) + 1);  // no overflow at SIZE_MAX
      if (have == out.size()) break;
    }
    const ssize_t n = ::read(fd.get(), out.data() + have, out.size() - have);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno_status(errno, "cannot read " + name);
    }
    if (n == 0) break;
    have += static_cast<std::size_t>(n);
  }
  if (have > max_bytes) {
    return resource_exhausted(name + " grew past the limit of " + std::to_string(max_bytes) +
                              " bytes while being read");
  }
  out.resize(have);
  return out;
}

}  // namespace testudo::crypto
