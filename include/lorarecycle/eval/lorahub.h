// LoRAHub (Huang et al., 2024) as a few-shot classification baseline: the LoRA Recycle paper's
// main comparison. Per task, one weight w_k per zoo LoRA composes ONE LoRA from the weighted A and
// B matrices, as LoRAHub does: for every adapted module A = sum_k w_k A_k, B = sum_k w_k B_k (so
// the weight delta is (sum w_k B_k)(sum w_k A_k), not the weighted mean of the deltas). The weights
// are searched gradient-free (CMA-ES, below) to minimise
//   support_loss(w) + l1 * sum_k |w_k|
// and the composed LoRA then classifies the queries by prototypes (tuning-free at test time
// except for the search). support_loss: prototypes from the support images, cross-entropy of
// shifted copies of every support image (rolled by +-shift pixels on both axes) with logits
// -squared distance / D (D = feature dim): with one shot no support image can be held out.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "lorarecycle/model/vit.h"

namespace lorarec::eval {

struct HubConfig {
  int budget = 40;     // objective evaluations per task (LoRAHub: 40 inference steps)
  double l1 = 0.05;    // weight of the L1 penalty on w (LoRAHub: 0.05)
  double sigma = 0.5;  // CMA-ES initial step size
  double bound = 1.5;  // w clamped to [-bound, bound] (LoRAHub's bounds)
  int shift = -1;      // support views rolled by +-shift pixels (-1: image_size / 16, at least 1)
};

// The composed LoRA (every LoRA of the same targets, layers, rank and scale, checked; no head).
model::Lora compose_loras(const std::vector<model::Lora>& loras, const std::vector<double>& w,
                          const model::ClipVisionConfig& vit);

// support_loss(w) (without the L1 term). support_px: [N*K, 3, S, S] class-major, normalised.
double hub_support_loss(const model::ClipVision& vit, const std::vector<model::Lora>& loras,
                        const std::vector<double>& w, const at::Tensor& support_px, int way, int shot, int shift);

struct HubResult {
  std::vector<double> weights;  // the best weights found
  double objective = 0;         // support_loss + l1 |w|_1 at them
  double objective_equal = 0;   // the same at equal weights 1/K (the search's start, its first evaluation)
  double accuracy = 0;          // percent of queries correct with the composed LoRA
  int evaluations = 0;
};

// One task: search, compose, classify the queries.
HubResult lorahub_episode(const model::ClipVision& vit, const std::vector<model::Lora>& loras,
                          const at::Tensor& support_px, const at::Tensor& query_px, int way, int shot,
                          const HubConfig& cfg, std::uint64_t seed);

// Minimises f over [lo, hi]^n with CMA-ES (Hansen's (mu/mu_w, lambda)-CMA-ES: weighted
// recombination, cumulative step-size adaptation, rank-one and rank-mu covariance updates;
// lambda = 4 + floor(3 ln n); samples are clamped to the bounds). f(x0) is evaluated first;
// returns the best point seen within `budget` evaluations and its value in *best_value.
std::vector<double> cma_es(const std::function<double(const std::vector<double>&)>& f, std::vector<double> x0,
                           double sigma, int budget, double lo, double hi, std::uint64_t seed, double* best_value);

}  // namespace lorarec::eval
