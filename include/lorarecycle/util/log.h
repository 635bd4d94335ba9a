// Logging: one macro family with level, rank and a [subsystem] tag.
// Rank 0 logs at info and above; other ranks only at warn and above (unless the level is debug),
// apart from LOG_INFO_EVERY_RANK lines.
// Thread-safe: each line is written with one call under a mutex.
#pragma once

#include <sstream>
#include <string>

namespace lorarec::log {

enum class Level { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

// Set once by the runtime after MPI initialisation.
void set_rank(int rank);
int rank();
void set_level(Level level);
Level level();
// Parses "debug", "info", "warn", "error"; throws InputError otherwise.
Level parse_level(const std::string& name);

// A number for people: `digits` decimals ("53.26"); JSON output keeps full precision.
std::string fixed(double value, int digits = 2);

// `digits` significant digits ("0.000835"), for values of unknown scale such as losses.
std::string sig(double value, int digits = 3);

bool enabled(Level level);
// Like enabled(), but info lines too on every rank: for the few lines each rank must show (one
// per finished unit of sharded work: a zoo LoRA, an inverted LoRA).
bool enabled_on_every_rank(Level level);
void write(Level level, const char* tag, const std::string& message);

}  // namespace lorarec::log

#define LORAREC_LOG(level, tag, expr)                           \
  do {                                                          \
    if (::lorarec::log::enabled(level)) {                       \
      std::ostringstream lorarec_log_os_;                       \
      lorarec_log_os_ << expr;                                  \
      ::lorarec::log::write(level, tag, lorarec_log_os_.str()); \
    }                                                           \
  } while (0)

// Info from every rank (enabled_on_every_rank), not only rank 0.
#define LOG_INFO_EVERY_RANK(tag, expr)                                                 \
  do {                                                                                 \
    if (::lorarec::log::enabled_on_every_rank(::lorarec::log::Level::kInfo)) {         \
      std::ostringstream lorarec_log_os_;                                              \
      lorarec_log_os_ << expr;                                                         \
      ::lorarec::log::write(::lorarec::log::Level::kInfo, tag, lorarec_log_os_.str()); \
    }                                                                                  \
  } while (0)

#define LOG_DEBUG(tag, expr) LORAREC_LOG(::lorarec::log::Level::kDebug, tag, expr)
#define LOG_INFO(tag, expr) LORAREC_LOG(::lorarec::log::Level::kInfo, tag, expr)
#define LOG_WARN(tag, expr) LORAREC_LOG(::lorarec::log::Level::kWarn, tag, expr)
#define LOG_ERROR(tag, expr) LORAREC_LOG(::lorarec::log::Level::kError, tag, expr)
