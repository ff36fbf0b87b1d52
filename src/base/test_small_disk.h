// For tests only: a small disk that fills up — a tmpfs of a few MiB, mounted in a private mount
// namespace so nothing of it shows outside the test process. Needs root (mount rights).
#pragma once

#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>

namespace testudo::testing {

// Enters a private mount namespace (once per process); false where that is not allowed.
inline bool private_mounts() {
  static const bool ok = [] {
    if (::unshare(CLONE_NEWNS) != 0) return false;
    // Keep our mounts from propagating to the rest of the machine.
    return ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) == 0;
  }();
  return ok;
}

// A tmpfs of `size` ("1m", "2m") at `path` (created, mode 0700), unmounted with the object.
// Call private_mounts() first.
class SmallDisk {
 public:
  SmallDisk(const std::string& path, const std::string& size) : path_(path) {
    std::error_code ec;
    std::filesystem::create_directories(path_, ec);
    const std::string options = "size=" + size + ",mode=0700";
    mounted_ = ::mount("tmpfs", path_.c_str(), "tmpfs", 0, options.c_str()) == 0;
    if (!mounted_) error_ = std::strerror(errno);
  }
  ~SmallDisk() {
    if (mounted_) ::umount2(path_.c_str(), MNT_DETACH);
  }
  SmallDisk(const SmallDisk&) = delete;
  SmallDisk& operator=(const SmallDisk&) = delete;
  bool mounted() const { return mounted_; }
  const std::string& error() const { return error_; }  // why the mount failed
  // Writes file `name` on it until the disk is full (to the last 4 KiB block); returns its
  // path, or "" if it cannot be created.
  std::string fill(const std::string& name) const {
    const std::string file = path_ + "/" + name;
    const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return {};
    const std::string chunk(4096, 'f');
    while (::write(fd, chunk.data(), chunk.size()) > 0) {
    }
    ::close(fd);
    return file;
  }

 private:
  std::string path_;
  bool mounted_ = false;
  std::string error_;
};

}  // namespace testudo::testing
