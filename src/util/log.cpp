#include "lorarecycle/util/log.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <iomanip>
#include <mutex>
#include <sstream>

#include "lorarecycle/util/error.h"

namespace lorarec::log {

std::string fixed(double value, int digits) {
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(digits);
  os << value;
  return os.str();
}
namespace {
std::atomic<int> g_rank{0};
std::atomic<int> g_level{static_cast<int>(Level::kInfo)};
std::mutex g_mutex;

const char* level_name(Level level) {
  switch (level) {
    case Level::kDebug:
      return "debug";
    case Level::kInfo:
      return "info";
    case Level::kWarn:
      return "warn";
    case Level::kError:
      return "error";
  }
  return "?";
}
}  // namespace

void set_rank(int rank) { g_rank = rank; }
int rank() { return g_rank; }
void set_level(Level level) { g_level = static_cast<int>(level); }
Level level() { return static_cast<Level>(g_level.load()); }

Level parse_level(const std::string& name) {
  if (name == "debug") return Level::kDebug;
  if (name == "info") return Level::kInfo;
  if (name == "warn") return Level::kWarn;
  if (name == "error") return Level::kError;
  throw InputError("unknown log level '" + name + "' (expected debug, info, warn or error)");
}

bool enabled(Level lvl) {
  if (static_cast<int>(lvl) < g_level.load()) return false;
  // Non-zero ranks stay quiet at info unless debug logging was asked for.
  if (g_rank.load() != 0 && lvl == Level::kInfo && level() != Level::kDebug) return false;
  return true;
}

bool enabled_on_every_rank(Level lvl) { return static_cast<int>(lvl) >= g_level.load(); }

std::string sig(double value, int digits) {
  std::ostringstream os;
  os << std::setprecision(digits) << value;
  return os.str();
}

void write(Level lvl, const char* tag, const std::string& message) {
  using clock = std::chrono::system_clock;
  const std::time_t now = clock::to_time_t(clock::now());
  std::tm tm{};
  localtime_r(&now, &tm);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%H:%M:%S", &tm);
  std::lock_guard<std::mutex> lock(g_mutex);
  std::FILE* out = lvl >= Level::kWarn ? stderr : stdout;
  std::fprintf(out, "%s %-5s [rank %d] [%s] %s\n", stamp, level_name(lvl), g_rank.load(), tag, message.c_str());
  std::fflush(out);
}

}  // namespace lorarec::log
