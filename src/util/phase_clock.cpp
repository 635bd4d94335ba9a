#include "lorarecycle/util/phase_clock.h"

#include <cstring>

namespace lorarec::util {

PhaseClock& PhaseClock::this_thread() {
  thread_local PhaseClock clock;
  return clock;
}

void PhaseClock::add(const char* name, double seconds) {
  if (!enabled_) return;
  for (auto& [n, s] : phases_)
    if (n == name || std::strcmp(n, name) == 0) {
      s += seconds;
      return;
    }
  phases_.emplace_back(name, seconds);
}

std::vector<std::pair<std::string, double>> PhaseClock::totals() const {
  std::vector<std::pair<std::string, double>> out;
  out.reserve(phases_.size());
  for (const auto& [n, s] : phases_) out.emplace_back(n, s);
  return out;
}

}  // namespace lorarec::util
