// Optimisation pieces shared by pretrain, zoo and metatrain: AdamW over a list of tensors with
// explicit state (for checkpoints), learning-rate schedules, and a data-parallel step.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace lorarec::dist {
class Communicator;
}

namespace lorarec::optim {

struct AdamWConfig {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;  // decoupled (AdamW); 0 = Adam
  // One buffer for all the params (each rebound to a view of it with set_data) and one for each
  // moment, so that an update is a few ops whatever the number of tensors (metatrain: 16 small
  // LoRA matrices, whose per-tensor update cost more than its arithmetic). Needs distinct params
  // of one dtype and device (else every param keeps its own tensors, as without it). Callers must
  // not rebind the params afterwards.
  bool flat = false;
};

// Adam/AdamW on tensors that require grad. Not thread-safe.
class AdamW {
 public:
  AdamW(std::vector<at::Tensor> params, AdamWConfig cfg);
  // One update with learning rate `lr` from the params' .grad() (undefined grads are skipped), or
  // from `flat_grads`: all the params' gradients in their order as one 1-D tensor (metatrain's
  // reduced buffer), used as it is.
  void step(double lr, const at::Tensor& flat_grads = {});
  // The same update where the 0-dim bool tensor `apply` (on the params' device) is true, and none
  // (moments, step count and weights unchanged) where it is false, without reading it on the host:
  // the step count lives on the device until state() or steps() reads it. Equal to step() up to
  // rounding (the bias correction is computed on the device).
  void step_masked(double lr, const at::Tensor& apply, const at::Tensor& flat_grads = {});
  void zero_grad();
  int64_t steps() const;
  const std::vector<at::Tensor>& params() const { return params_; }
  // "adam.m.<i>", "adam.v.<i>", "adam.step" for a checkpoint; load_state checks the shapes.
  std::map<std::string, at::Tensor> state() const;
  void load_state(const std::map<std::string, at::Tensor>& state);

 private:
  // Folds the device-side count of masked steps into step_ (one host read).
  void settle() const;
  // Calls update(param, m, v, grad) once on the flat buffers (flat mode, with flat_grads or every
  // .grad() defined) or once per param with a gradient; step() and step_masked() pass the formula.
  template <class Update>
  void for_each_update(const at::Tensor& flat_grads, Update&& update);
  // RuntimeError unless flat_grads is undefined or 1-D with numel_ values (a caller's bug).
  void check_flat_grads(const at::Tensor& flat_grads) const;
  std::vector<at::Tensor> params_, m_, v_;
  at::Tensor flat_p_, flat_m_, flat_v_;  // defined in flat mode; params_, m_ and v_ are their views
  int64_t numel_ = 0;                    // the params' values in all
  AdamWConfig cfg_;
  mutable int64_t step_ = 0;
  mutable at::Tensor pending_;  // step_masked's applied steps not yet in step_ (int64, device)
};

// Linear warm-up from 0 over `warmup` steps to `peak`, then cosine decay to `floor` at `total`.
// Non-finite training steps (NaN/Inf loss or gradient): the caller skips the step when ok()
// says so; the guard counts them and throws a RuntimeError after `max_in_row` in a row.
class BadStepGuard {
 public:
  // skipped_before: the count of an earlier run that this one resumes.
  BadStepGuard(std::string tag, int max_in_row, std::string hint = "", int64_t skipped_before = 0);
  // True when the step may be applied; false (counted, warned) when it must be skipped.
  bool ok(bool finite, int64_t step);
  int64_t skipped() const { return skipped_; }

 private:
  std::string tag_, hint_;
  int max_in_row_ = 10, in_row_ = 0;
  int64_t skipped_ = 0;
};

double warmup_cosine(int64_t step, int64_t total, int64_t warmup, double peak, double floor);
// The official meta-training schedule: cycles of `cycle` steps, `warmup` linear steps from lo to hi,
// then cosine back to lo (CosineAnnealingWarmupRestarts).
double cyclic_warmup_cosine(int64_t step, int64_t cycle, int64_t warmup, double lo, double hi);

// Collective: averages the gradients of `params` over ranks through one flat buffer.
void all_reduce_grads(const std::vector<at::Tensor>& params, dist::Communicator& comm);

// Global L2 norm of the gradients; scales them down to max_norm when above (max_norm > 0).
double clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm);
// The same for gradients held in one flat buffer (scaled in place): clip_grad_norm_on_device reads
// nothing on the host (the norm comes back as a 0-dim double tensor on the buffer's device, the
// scale is chosen there); clip_grad_norm reads that norm (one sync).
at::Tensor clip_grad_norm_on_device(const at::Tensor& flat_grads, double max_norm);
double clip_grad_norm(const at::Tensor& flat_grads, double max_norm);
// True when every defined gradient of params is finite (no NaN or Inf).
bool grads_finite(const std::vector<at::Tensor>& params);

}  // namespace lorarec::optim
