// Wall-clock time per named phase of a loop (e.g. the training step's patch gather, attention,
// MLP, loss, backward, optimizer), for a profile that needs no external profiler.
//
// Meaningful where the timed work runs synchronously (CPU ops); on a GPU the scopes would time
// kernel launches, so callers enable the clock on CPUs only. One clock per thread
// (PhaseClock::this_thread()); a disabled clock costs one branch per scope.
#pragma once

#include <chrono>
#include <string>
#include <utility>
#include <vector>

namespace lorarec::util {

class PhaseClock {
 public:
  // This thread's clock (disabled until enable(true)).
  static PhaseClock& this_thread();

  void enable(bool on) { enabled_ = on; }
  bool enabled() const { return enabled_; }
  // Adds seconds to a phase when enabled; name must outlive the clock (a string literal).
  void add(const char* name, double seconds);
  // (phase, seconds) in the order the phases were first seen.
  std::vector<std::pair<std::string, double>> totals() const;
  void reset() { phases_.clear(); }

 private:
  bool enabled_ = false;
  std::vector<std::pair<const char*, double>> phases_;
};

// Times its scope into a phase of this thread's clock when the clock is enabled.
class PhaseScope {
 public:
  explicit PhaseScope(const char* name) : clock_(PhaseClock::this_thread()), name_(name) {
    if (clock_.enabled()) t0_ = std::chrono::steady_clock::now();
  }
  ~PhaseScope() { stop(); }
  // Ends the phase before the scope does (idempotent).
  void stop() {
    if (name_ == nullptr || !clock_.enabled()) return;
    clock_.add(name_, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count());
    name_ = nullptr;
  }
  PhaseScope(const PhaseScope&) = delete;
  PhaseScope& operator=(const PhaseScope&) = delete;

 private:
  PhaseClock& clock_;
  const char* name_;
  std::chrono::steady_clock::time_point t0_{};
};

}  // namespace lorarec::util
