#include "lorarecycle/eval/lorahub.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>

#include "lorarecycle/data/image_set.h"
#include "lorarecycle/fewshot/fewshot.h"
#include "lorarecycle/util/error.h"

namespace lorarec::eval {

model::Lora compose_loras(const std::vector<model::Lora>& loras, const std::vector<double>& w,
                          const model::ClipVisionConfig& vit) {
  model::require_same_shape(loras, "lorahub");
  if (w.size() != loras.size()) throw InputError("lorahub: one weight per LoRA expected");
  model::Lora out = model::Lora::empty(vit, loras[0].config());
  for (const auto& [key, a0] : loras[0].adapters()) {
    at::Tensor a = at::zeros_like(a0.a), b = at::zeros_like(a0.b);
    for (size_t k = 0; k < loras.size(); ++k) {
      const auto& ad = loras[k].adapters().at(key);
      a.add_(ad.a, w[k]);
      b.add_(ad.b, w[k]);
    }
    out.set(key.first, static_cast<model::Module>(key.second), model::Adapter{a, b});
  }
  return out;
}

double hub_support_loss(const model::ClipVision& vit, const std::vector<model::Lora>& loras,
                        const std::vector<double>& w, const at::Tensor& support_px, int way, int shot, int shift) {
  at::NoGradGuard ng;
  const model::Lora lora = compose_loras(loras, w, vit.config());
  const int64_t n = support_px.size(0);
  // Support, then its copies rolled by (+s, +s) and (-s, -s): one forward.
  const at::Tensor views = at::cat(
      {support_px, at::roll(support_px, {shift, shift}, {2, 3}), at::roll(support_px, {-shift, -shift}, {2, 3})});
  const at::Tensor f = vit.forward(views, {}, &lora).feature.to(at::kFloat);
  const at::Tensor logits =
      fewshot::prototype_logits(f.narrow(0, 0, n), f.narrow(0, n, 2 * n), way, shot) / double(f.size(1));
  const at::Tensor y = data::episode_labels(way, shot).repeat({2}).to(logits.device());
  return at::cross_entropy_loss(logits, y).item<double>();
}

std::vector<double> cma_es(const std::function<double(const std::vector<double>&)>& f, std::vector<double> x0,
                           double sigma, int budget, double lo, double hi, std::uint64_t seed, double* best_value) {
  const int n = static_cast<int>(x0.size());
  if (n < 1 || budget < 1) throw InputError("cma_es: need at least one dimension and one evaluation");
  const auto opt = at::TensorOptions().dtype(at::kDouble);
  const int lambda = 4 + static_cast<int>(std::floor(3.0 * std::log(double(n))));
  const int mu = lambda / 2;
  std::vector<double> wts(mu);
  for (int i = 0; i < mu; ++i) wts[i] = std::log(mu + 0.5) - std::log(i + 1.0);
  const double wsum = std::accumulate(wts.begin(), wts.end(), 0.0);
  double wsq = 0;
  for (double& v : wts) v /= wsum, wsq += v * v;
  const double mueff = 1.0 / wsq;
  const double cs = (mueff + 2) / (n + mueff + 5);
  const double ds = 1 + 2 * std::max(0.0, std::sqrt((mueff - 1) / (n + 1)) - 1) + cs;
  const double cc = (4 + mueff / n) / (n + 4 + 2 * mueff / n);
  const double c1 = 2 / ((n + 1.3) * (n + 1.3) + mueff);
  const double cmu = std::min(1 - c1, 2 * (mueff - 2 + 1 / mueff) / ((n + 2) * (n + 2) + mueff));
  const double chin = std::sqrt(double(n)) * (1 - 1.0 / (4 * n) + 1.0 / (21.0 * n * n));

  auto clamp = [&](at::Tensor x) { return x.clamp(lo, hi); };
  auto to_vec = [](const at::Tensor& x) {
    const at::Tensor c = x.contiguous();
    return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
  };
  at::Tensor m = clamp(at::tensor(x0, opt));
  at::Tensor C = at::eye(n, opt), B = at::eye(n, opt), D = at::ones({n}, opt);
  at::Tensor ps = at::zeros({n}, opt), pc = at::zeros({n}, opt);
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0, 1);

  std::vector<double> best = to_vec(m);
  double best_f = f(best);
  int evals = 1;
  for (int gen = 0; evals < budget; ++gen) {
    const int lam = std::min(lambda, budget - evals);
    std::vector<std::pair<double, at::Tensor>> pop;  // (value, y = (x - m) / sigma)
    for (int i = 0; i < lam; ++i) {
      std::vector<double> z(n);
      for (double& v : z) v = normal(rng);
      const at::Tensor y = at::matmul(B, D * at::tensor(z, opt));
      const at::Tensor x = clamp(m + sigma * y);
      const std::vector<double> xv = to_vec(x);
      const double fx = f(xv);
      ++evals;
      if (fx < best_f) best_f = fx, best = xv;
      pop.emplace_back(fx, (x - m) / sigma);  // the clamped step
    }
    if (lam < lambda) break;  // budget spent mid-generation: no update from a partial population
    std::sort(pop.begin(), pop.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    at::Tensor yw = at::zeros({n}, opt);
    for (int i = 0; i < mu; ++i) yw += wts[i] * pop[i].second;
    m = clamp(m + sigma * yw);
    // C^(-1/2) y_w = B D^-1 B^T y_w
    const at::Tensor cinv_yw = at::matmul(B, at::matmul(B.t(), yw) / D);
    ps = (1 - cs) * ps + std::sqrt(cs * (2 - cs) * mueff) * cinv_yw;
    const double psn = ps.norm().item<double>();
    const bool hs = psn / std::sqrt(1 - std::pow(1 - cs, 2.0 * (gen + 1))) < (1.4 + 2.0 / (n + 1)) * chin;
    pc = (1 - cc) * pc + (hs ? std::sqrt(cc * (2 - cc) * mueff) : 0.0) * yw;
    at::Tensor rank_mu = at::zeros({n, n}, opt);
    for (int i = 0; i < mu; ++i) rank_mu += wts[i] * at::outer(pop[i].second, pop[i].second);
    C = (1 - c1 - cmu) * C + c1 * (at::outer(pc, pc) + (hs ? 0.0 : cc * (2 - cc)) * C) + cmu * rank_mu;
    C = (C + C.t()) / 2;
    sigma *= std::exp((cs / ds) * (psn / chin - 1));
    auto [evals_c, vecs] = at::linalg_eigh(C);
    D = evals_c.clamp_min(1e-20).sqrt();
    B = vecs;
  }
  if (best_value) *best_value = best_f;
  return best;
}

HubResult lorahub_episode(const model::ClipVision& vit, const std::vector<model::Lora>& loras,
                          const at::Tensor& support_px, const at::Tensor& query_px, int way, int shot,
                          const HubConfig& cfg, std::uint64_t seed) {
  const int K = static_cast<int>(loras.size());
  const int shift = cfg.shift > 0 ? cfg.shift : std::max(1, vit.config().image_size / 16);
  HubResult r;
  auto objective = [&](const std::vector<double>& w) {
    double l1 = 0;
    for (double v : w) l1 += std::abs(v);
    const double value = hub_support_loss(vit, loras, w, support_px, way, shot, shift) + cfg.l1 * l1;
    if (r.evaluations++ == 0) r.objective_equal = value;  // cma_es evaluates its start first
    return value;
  };
  r.weights = cma_es(objective, std::vector<double>(K, 1.0 / K), cfg.sigma, cfg.budget, -cfg.bound, cfg.bound, seed,
                     &r.objective);
  at::NoGradGuard ng;
  const model::Lora lora = compose_loras(loras, r.weights, vit.config());
  const int64_t ns = support_px.size(0);
  const at::Tensor f = vit.forward(at::cat({support_px, query_px}), {}, &lora).feature;
  const at::Tensor pred =
      fewshot::prototype_logits(f.narrow(0, 0, ns), f.narrow(0, ns, f.size(0) - ns), way, shot).argmax(-1).cpu();
  const int q = static_cast<int>(query_px.size(0) / way);
  r.accuracy = 100.0 * pred.eq(data::episode_labels(way, q)).to(at::kDouble).mean().item<double>();
  return r;
}

}  // namespace lorarec::eval
