// A trace of every ATen op and autograd node of a stretch of a loop, for finding per-op work that
// a per-phase clock cannot see (e.g. what does not shrink with the token count in a masked step).
//
// Off unless the environment names a file: LORAREC_OP_TRACE=FILE records
// LORAREC_OP_TRACE_STEPS (default 10) consecutive calls of a loop into FILE, a Chrome trace
// (LibTorch's legacy profiler; CPU times). bench/op_trace.py sums it per op. Dev tool: the
// profiler's callbacks slow every op while it records.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace lorarec::util {

class OpTrace {
 public:
  // The trace the environment asks for, on rank 0 only (nullptr when LORAREC_OP_TRACE is unset or
  // empty, or on another rank: every rank would write the same file).
  static std::unique_ptr<OpTrace> from_env(int rank);
  explicit OpTrace(std::string file, int64_t steps);
  ~OpTrace();
  // Called once before every step of the loop: starts recording at the first call and writes
  // the file after `steps` calls (or at destruction when the loop ends sooner).
  void before_step();
  OpTrace(const OpTrace&) = delete;
  OpTrace& operator=(const OpTrace&) = delete;

 private:
  struct Recorder;
  std::string file_;
  int64_t steps_ = 0, seen_ = 0;
  std::unique_ptr<Recorder> rec_;
};

}  // namespace lorarec::util
