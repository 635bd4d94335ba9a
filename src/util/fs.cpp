#include "lorarecycle/util/fs.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "lorarecycle/util/error.h"
#include "lorarecycle/util/log.h"

namespace lorarec::fs {

stdfs::path temp_sibling(const stdfs::path& target) {
  const stdfs::path dir = target.has_parent_path() ? target.parent_path() : stdfs::path(".");
  return dir / ("." + target.filename().string() + ".tmp." + std::to_string(::getpid()));
}

void write_atomically(const stdfs::path& target, const std::function<void(const stdfs::path&)>& write) {
  const stdfs::path tmp = temp_sibling(target);
  std::error_code ec;
  stdfs::remove_all(tmp, ec);
  try {
    write(tmp);
    if (stdfs::is_directory(tmp) && stdfs::exists(target)) {
      const stdfs::path old = temp_sibling(target).string() + ".old";
      stdfs::remove_all(old, ec);
      stdfs::rename(target, old);
      stdfs::rename(tmp, target);
      stdfs::remove_all(old, ec);
    } else {
      stdfs::rename(tmp, target);
    }
  } catch (const stdfs::filesystem_error& e) {
    stdfs::remove_all(tmp, ec);
    throw WriteError(target.string(), e.code().message());
  } catch (const WriteError& e) {  // from a writer or a nested write_atomically: name this target
    stdfs::remove_all(tmp, ec);
    throw WriteError(target.string(), e.reason());
  } catch (const RuntimeError& e) {  // e.g. HDF5's failed write: keep its message as the reason
    stdfs::remove_all(tmp, ec);
    throw WriteError(target.string(), e.what());
  } catch (...) {
    stdfs::remove_all(tmp, ec);
    throw;
  }
}

void make_dirs(const stdfs::path& dir) {
  std::error_code ec;
  stdfs::create_directories(dir, ec);
  if (ec) throw WriteError(dir.string(), ec.message());
}

void throw_write_error(const stdfs::path& path) { throw WriteError(path.string(), std::strerror(errno)); }

std::vector<std::string> remove_temporaries(const stdfs::path& dir, const char* stage) {
  std::vector<std::string> removed;
  if (!stdfs::is_directory(dir)) return removed;
  for (const auto& e : stdfs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.size() > 1 && name[0] == '.' && name.find(".tmp.") != std::string::npos) {
      std::error_code ec;
      stdfs::remove_all(e.path(), ec);
      removed.push_back(e.path().string());
      LOG_WARN(stage, "removed the partial output of an interrupted run: " << removed.back());
    }
  }
  return removed;
}

std::string read_text(const stdfs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError("cannot open '" + path.string() + "': " + std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw InputError("cannot read '" + path.string() + "'");
  return ss.str();
}

void write_text(const stdfs::path& path, const std::string& text) {
  write_atomically(path, [&](const stdfs::path& tmp) {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw_write_error(tmp);
    out << text;
    out.flush();
    if (!out) throw_write_error(tmp);
  });
}

}  // namespace lorarec::fs
