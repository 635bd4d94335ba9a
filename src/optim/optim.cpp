#include "lorarecycle/optim/optim.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <cmath>

#include "lorarecycle/dist/communicator.h"
#include "lorarecycle/util/error.h"
#include "lorarecycle/util/log.h"

namespace lorarec::optim {

AdamW::AdamW(std::vector<at::Tensor> params, AdamWConfig cfg) : params_(std::move(params)), cfg_(cfg) {
  bool flat = cfg_.flat && !params_.empty();
  for (const auto& p : params_) {
    flat = flat && p.scalar_type() == params_[0].scalar_type() && p.device() == params_[0].device();
    numel_ += p.numel();
  }
  if (!flat) {
    for (const auto& p : params_) {
      m_.push_back(at::zeros_like(p));
      v_.push_back(at::zeros_like(p));
    }
    return;
  }
  at::NoGradGuard no_grad;
  const auto opts = params_[0].options().requires_grad(false);
  flat_p_ = at::empty({numel_}, opts), flat_m_ = at::zeros({numel_}, opts), flat_v_ = at::zeros({numel_}, opts);
  int64_t off = 0;
  for (auto& p : params_) {
    const auto view = [&](const at::Tensor& buf) { return buf.narrow(0, off, p.numel()).view(p.sizes()); };
    view(flat_p_).copy_(p.detach());
    p.set_data(view(flat_p_));  // the same tensor (the model's) now lives in the buffer
    m_.push_back(view(flat_m_));
    v_.push_back(view(flat_v_));
    off += p.numel();
  }
}

template <class Update>
void AdamW::for_each_update(const at::Tensor& flat_grads, Update&& update) {
  if (flat_p_.defined()) {
    at::Tensor g = flat_grads;
    if (!g.defined()) {
      std::vector<at::Tensor> parts;
      for (const auto& p : params_)
        if (p.grad().defined()) parts.push_back(p.grad().reshape({-1}));
      if (parts.size() == params_.size()) g = at::cat(parts);  // else the per-param path skips the missing
    }
    if (g.defined()) {
      update(flat_p_, flat_m_, flat_v_, g);
      // A write through the buffer does not touch the params' own version counters (set_data gave
      // them their own): bump them, so that autograd still catches a param changed between a
      // forward and its backward.
      for (auto& p : params_) p.unsafeGetTensorImpl()->bump_version();
      return;
    }
  }
  int64_t off = 0;
  for (size_t i = 0; i < params_.size(); ++i) {
    at::Tensor& p = params_[i];
    const at::Tensor g = flat_grads.defined() ? flat_grads.narrow(0, off, p.numel()).view(p.sizes()) : p.grad();
    off += p.numel();
    if (g.defined()) update(p, m_[i], v_[i], g);
  }
}

void AdamW::check_flat_grads(const at::Tensor& flat_grads) const {
  if (flat_grads.defined() && (flat_grads.dim() != 1 || flat_grads.numel() != numel_))
    throw RuntimeError("AdamW: flat gradients of " + std::to_string(flat_grads.numel()) + " values for " +
                       std::to_string(numel_) + " parameter values");
}

void AdamW::step(double lr, const at::Tensor& flat_grads) {
  check_flat_grads(flat_grads);
  ++step_;
  at::NoGradGuard no_grad;
  const double bc1 = 1.0 - std::pow(cfg_.beta1, double(step_));
  const double bc2 = 1.0 - std::pow(cfg_.beta2, double(step_));
  for_each_update(flat_grads, [&](at::Tensor& p, at::Tensor& m, at::Tensor& v, const at::Tensor& g) {
    if (cfg_.weight_decay > 0) p.mul_(1.0 - lr * cfg_.weight_decay);
    m.mul_(cfg_.beta1).add_(g, 1.0 - cfg_.beta1);
    v.mul_(cfg_.beta2).addcmul_(g, g, 1.0 - cfg_.beta2);
    p.addcdiv_(m, (v / bc2).sqrt_().add_(cfg_.eps), -lr / bc1);
  });
}

void AdamW::step_masked(double lr, const at::Tensor& apply, const at::Tensor& flat_grads) {
  check_flat_grads(flat_grads);
  at::NoGradGuard no_grad;
  if (params_.empty()) return;
  const at::Tensor on = apply.to(params_[0].device(), at::kBool).reshape({});
  if (!pending_.defined()) pending_ = at::zeros({}, at::TensorOptions().dtype(at::kLong).device(on.device()));
  pending_.add_(on.to(at::kLong));
  const at::Tensor t = (pending_ + step_).to(at::kDouble);
  const at::Tensor bc1 = 1.0 - at::pow(cfg_.beta1, t), bc2 = 1.0 - at::pow(cfg_.beta2, t);
  // A skipped step's gradient may hold NaN: every new value is chosen, never scaled, by `on`.
  for_each_update(flat_grads, [&](at::Tensor& p, at::Tensor& m, at::Tensor& v, const at::Tensor& g) {
    m.copy_(at::where(on, m * cfg_.beta1 + g * (1.0 - cfg_.beta1), m));
    v.copy_(at::where(on, v * cfg_.beta2 + g * g * (1.0 - cfg_.beta2), v));
    at::Tensor next = p;
    if (cfg_.weight_decay > 0) next = next * (1.0 - lr * cfg_.weight_decay);
    const at::Tensor denom = (v / bc2.to(v.scalar_type())).sqrt() + cfg_.eps;
    next = next - m / denom * (lr / bc1).to(p.scalar_type());
    p.copy_(at::where(on, next, p));
  });
}

int64_t AdamW::steps() const {
  settle();
  return step_;
}

void AdamW::settle() const {
  if (!pending_.defined()) return;
  step_ += pending_.item<int64_t>();
  pending_.zero_();
}

void AdamW::zero_grad() {
  for (auto& p : params_)
    if (p.grad().defined()) p.mutable_grad() = at::Tensor();
}

std::map<std::string, at::Tensor> AdamW::state() const {
  settle();
  std::map<std::string, at::Tensor> s;
  for (size_t i = 0; i < params_.size(); ++i) {
    s["adam.m." + std::to_string(i)] = m_[i];
    s["adam.v." + std::to_string(i)] = v_[i];
  }
  s["adam.step"] = at::tensor({step_}, at::kLong);
  return s;
}

void AdamW::load_state(const std::map<std::string, at::Tensor>& s) {
  for (size_t i = 0; i < params_.size(); ++i) {
    const std::pair<const char*, at::Tensor*> slots[] = {{"adam.m.", &m_[i]}, {"adam.v.", &v_[i]}};
    for (const auto& [name, dst] : slots) {
      auto it = s.find(name + std::to_string(i));
      if (it == s.end())
        throw InputError(std::string("checkpoint lacks optimizer state '") + name + std::to_string(i) + "'");
      if (it->second.sizes() != dst->sizes()) throw InputError("checkpoint optimizer state does not match the model");
      dst->copy_(it->second);
    }
  }
  auto it = s.find("adam.step");
  if (it == s.end()) throw InputError("checkpoint lacks 'adam.step'");
  step_ = it->second.item<int64_t>();
  pending_ = at::Tensor();
}

double warmup_cosine(int64_t step, int64_t total, int64_t warmup, double peak, double floor) {
  if (warmup > 0 && step < warmup) return peak * double(step + 1) / double(warmup);
  const double t = total > warmup ? double(step - warmup) / double(total - warmup) : 1.0;
  return floor + 0.5 * (peak - floor) * (1.0 + std::cos(M_PI * std::min(1.0, std::max(0.0, t))));
}

double cyclic_warmup_cosine(int64_t step, int64_t cycle, int64_t warmup, double lo, double hi) {
  const int64_t s = step % cycle;
  if (s < warmup) return lo + (hi - lo) * double(s) / double(warmup);
  const double t = double(s - warmup) / double(cycle - warmup);
  return lo + 0.5 * (hi - lo) * (1.0 + std::cos(M_PI * t));
}

void all_reduce_grads(const std::vector<at::Tensor>& params, dist::Communicator& comm) {
  if (comm.size() == 1) return;
  std::vector<at::Tensor> grads;
  for (at::Tensor p : params) {                                     // a handle: setting its grad sets the parameter's
    if (!p.grad().defined()) p.mutable_grad() = at::zeros_like(p);  // same layout on every rank
    grads.push_back(p.grad());
  }
  comm.all_reduce_mean(grads);
}

bool grads_finite(const std::vector<at::Tensor>& params) {
  for (const auto& p : params)
    if (p.grad().defined() && !p.grad().isfinite().all().item<bool>()) return false;
  return true;
}

at::Tensor clip_grad_norm_on_device(const at::Tensor& flat_grads, double max_norm) {
  at::NoGradGuard ng;
  const at::Tensor norm = flat_grads.pow(2).sum().to(at::kDouble).sqrt();
  if (max_norm > 0)
    flat_grads.mul_(
        at::where(norm > max_norm, max_norm / (norm + 1e-6), at::ones_like(norm)).to(flat_grads.scalar_type()));
  return norm;
}

double clip_grad_norm(const at::Tensor& flat_grads, double max_norm) {
  return clip_grad_norm_on_device(flat_grads, max_norm).item<double>();  // one sync
}

double clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm) {
  std::vector<at::Tensor> sq;
  for (const auto& p : params)
    if (p.grad().defined()) sq.push_back(p.grad().pow(2).sum());
  const double norm = sq.empty() ? 0.0 : std::sqrt(at::stack(sq).sum().item<double>());  // one sync
  if (max_norm > 0 && norm > max_norm) {
    at::NoGradGuard ng;
    for (const auto& p : params)
      if (p.grad().defined()) p.grad().mul_(max_norm / (norm + 1e-6));
  }
  return norm;
}

}  // namespace lorarec::optim

namespace lorarec::optim {

BadStepGuard::BadStepGuard(std::string tag, int max_in_row, std::string hint, int64_t skipped_before)
    : tag_(std::move(tag)), hint_(std::move(hint)), max_in_row_(max_in_row), skipped_(skipped_before) {
  if (max_in_row_ < 1) throw InputError(tag_ + ": --max-bad-steps must be >= 1");
}

bool BadStepGuard::ok(bool finite, int64_t step) {
  if (finite) {
    in_row_ = 0;
    return true;
  }
  ++in_row_;
  ++skipped_;
  LOG_WARN(tag_.c_str(), "step " << step << ": non-finite loss or gradient, step skipped (" << in_row_ << " in a row, "
                                 << skipped_ << " in all)");
  if (in_row_ >= max_in_row_)
    throw RuntimeError(tag_ + ": " + std::to_string(in_row_) +
                       " steps in a row with a non-finite loss or gradient (--max-bad-steps)" + hint_);
  return false;
}

}  // namespace lorarec::optim
