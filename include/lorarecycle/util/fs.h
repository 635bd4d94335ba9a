// File-system helpers. Every file the system writes goes to a temporary name in the same
// directory and is renamed into place when complete, so a crash never leaves a half-written
// file that a later run would trust.
#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "lorarecycle/util/error.h"

namespace lorarec::fs {

namespace stdfs = std::filesystem;

// A write that failed (disk full, read-only file system, a directory in the way, ...):
// "cannot write '<target>': <reason>; the previous version, if any, is unchanged".
class WriteError : public RuntimeError {
 public:
  WriteError(const std::string& target, const std::string& reason)
      : RuntimeError("cannot write '" + target + "': " + reason + "; the previous version, if any, is unchanged"),
        reason_(reason) {}
  const std::string& reason() const { return reason_; }

 private:
  std::string reason_;
};
// For writers inside write_atomically: throws WriteError(path, strerror(errno)).
[[noreturn]] void throw_write_error(const stdfs::path& path);

// A temporary sibling name of `target`, unique per process: "<dir>/.<name>.tmp.<pid>".
stdfs::path temp_sibling(const stdfs::path& target);

// Calls write(tmp) with a temporary sibling path, then renames tmp onto target (atomic on
// POSIX). On any exception the temporary is removed and the exception re-thrown; the previous
// `target`, if any, is untouched. Works for files and for directories (a directory target that
// already exists is replaced: the old one is renamed away first and removed after).
void write_atomically(const stdfs::path& target, const std::function<void(const stdfs::path&)>& write);

// Removes the temporary siblings (temp_sibling names) that an interrupted run left in `dir`:
// they are never trusted. Each is named in one warning under `stage`'s tag, the same words for
// every stage (the fault tests look for them). Returns what was removed.
std::vector<std::string> remove_temporaries(const stdfs::path& dir, const char* stage);

// create_directories, with a WriteError naming the directory when it fails.
void make_dirs(const stdfs::path& dir);
// Whole file as a string; InputError naming the file when it cannot be read.
std::string read_text(const stdfs::path& path);

// Writes text atomically.
void write_text(const stdfs::path& path, const std::string& text);

}  // namespace lorarec::fs
