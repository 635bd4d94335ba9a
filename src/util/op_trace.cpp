#include "lorarecycle/util/op_trace.h"

#include <torch/csrc/autograd/profiler_legacy.h>

#include <cstdlib>

#include "lorarecycle/util/env.h"
#include "lorarecycle/util/error.h"
#include "lorarecycle/util/log.h"

namespace lorarec::util {

struct OpTrace::Recorder {
  explicit Recorder(const std::string& file) : profile(file) {}
  torch::autograd::profiler::RecordProfile profile;  // writes the file when destroyed
};

std::unique_ptr<OpTrace> OpTrace::from_env(int rank) {
  const char* f = env::get(env::kOpTrace);
  if (f == nullptr || *f == '\0' || rank != 0) return nullptr;
  int64_t steps = 10;
  if (const char* s = env::get(env::kOpTraceSteps)) {
    char* end = nullptr;
    steps = std::strtoll(s, &end, 10);
    if (end == s || *end != '\0' || steps < 1)
      throw InputError(std::string("LORAREC_OP_TRACE_STEPS must be a whole number >= 1, got '") + s + "'");
  }
  return std::make_unique<OpTrace>(f, steps);
}

OpTrace::OpTrace(std::string file, int64_t steps) : file_(std::move(file)), steps_(steps) {}

OpTrace::~OpTrace() = default;  // here, where Recorder is complete

void OpTrace::before_step() {
  if (seen_ == 0) {
    rec_ = std::make_unique<Recorder>(file_);
    LOG_INFO("op-trace", "recording " << steps_ << " steps into " << file_);
  }
  if (seen_++ == steps_) {
    rec_.reset();
    LOG_INFO("op-trace", "wrote " << file_);
  }
}

}  // namespace lorarec::util
