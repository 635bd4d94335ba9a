#include "lorarecycle/fewshot/fewshot.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>

#include "lorarecycle/dist/communicator.h"
#include "lorarecycle/model/vit.h"
#include "lorarecycle/util/error.h"

namespace lorarec::fewshot {

Accuracy summarize(const std::vector<double>& acc, double seconds) {
  Accuracy a;
  a.episodes = static_cast<int64_t>(acc.size());
  a.seconds = seconds;
  if (acc.empty()) return a;
  double sum = 0, sq = 0;
  for (double x : acc) sum += x;
  a.mean = sum / acc.size();
  for (double x : acc) sq += (x - a.mean) * (x - a.mean);
  a.ci95 = 1.96 * std::sqrt(sq / acc.size()) / std::sqrt(double(acc.size()));
  a.values = acc;
  return a;
}

Accuracy paired_difference(const std::vector<double>& a, const std::vector<double>& b) {
  const size_t n = std::min(a.size(), b.size());
  if (n == 0) throw InputError("paired_difference: no episodes to compare (a per-episode list is empty)");
  std::vector<double> d(n);
  for (size_t i = 0; i < n; ++i) d[i] = a[i] - b[i];
  return summarize(d, 0.0);
}

std::vector<double> round_robin_to_order(const std::vector<double>& gathered, int world) {
  if (world < 1) throw InputError("round_robin_to_order: world size must be >= 1, got " + std::to_string(world));
  const auto n = static_cast<int64_t>(gathered.size());
  std::vector<double> out(gathered.size());
  int64_t k = 0;
  for (int r = 0; r < world; ++r)
    for (int64_t i = r; i < n; i += world) out[i] = gathered[k++];
  return out;
}

at::Tensor embed_rows(const model::ClipVision& vit, const model::Lora* lora, int64_t begin, int64_t end, int batch_size,
                      const std::function<at::Tensor(int64_t, int64_t)>& images,
                      const std::function<void(int64_t)>& on_batch) {
  std::vector<at::Tensor> parts;
  at::NoGradGuard no_grad;
  for (int64_t s = begin; s < end; s += batch_size) {
    const int64_t count = std::min<int64_t>(batch_size, end - s);
    parts.push_back(vit.forward(vit.preprocess(images(s, count)), {}, lora).feature.to(at::kCPU, at::kFloat));
    if (on_batch) on_batch(count);
  }
  return parts.empty() ? at::empty({0, vit.feature_dim()}, at::kFloat) : at::cat(parts);
}

at::Tensor embed_all(const model::ClipVision& vit, const model::Lora* lora, const data::ImageSet& set,
                     dist::Communicator& comm, int batch_size) {
  const int64_t n = set.size(), r = comm.rank(), w = comm.size();
  const at::Tensor local = embed_rows(vit, lora, n * r / w, n * (r + 1) / w, batch_size,
                                      [&](int64_t s, int64_t c) { return set.images().slice(0, s, s + c); });
  if (w == 1) return local;
  at::Tensor all = comm.gather_rows(local, 0);
  if (r != 0) all = at::empty({n, vit.feature_dim()}, at::kFloat);
  comm.broadcast(all, 0);
  return all;
}

std::vector<double> all_gather_values(const std::vector<double>& mine, int64_t total, dist::Communicator& comm) {
  if (comm.size() == 1) return mine;
  const at::Tensor g = comm.gather_rows(at::tensor(mine, at::kDouble).view({-1, 1}), 0);
  at::Tensor flat = comm.rank() == 0 ? g.view({-1}).contiguous() : at::empty({total}, at::kDouble);
  comm.broadcast(flat, 0);
  return round_robin_to_order(std::vector<double>(flat.data_ptr<double>(), flat.data_ptr<double>() + flat.numel()),
                              comm.size());
}

at::Tensor prototype_distances(const at::Tensor& query, const at::Tensor& protos) {
  const at::Tensor q2 = query.pow(2).sum(-1, true);          // [M, 1]
  const at::Tensor p2 = protos.pow(2).sum(-1).unsqueeze(0);  // [1, C]
  return -(q2 - 2.0 * at::matmul(query, protos.t()) + p2);   // [M, C]
}

at::Tensor class_prototypes(const at::Tensor& features, const at::Tensor& labels, int64_t C) {
  return at::zeros({C, features.size(1)}, features.options()).index_add_(0, labels, features) /
         at::bincount(labels, {}, C).to(features.scalar_type()).unsqueeze(1);
}

at::Tensor episode_prototypes(const at::Tensor& support, int n_way, int k_shot) {
  return support.view({n_way, k_shot, support.size(-1)}).mean(1);
}

at::Tensor prototype_logits(const at::Tensor& support, const at::Tensor& query, int n_way, int k_shot) {
  return prototype_distances(query, episode_prototypes(support, n_way, k_shot));
}

double episode_accuracy(const at::Tensor& features, const data::Episode& e, const data::EpisodeSpec& spec) {
  const at::Tensor s = features.index_select(0, at::tensor(e.support, at::kLong));
  const at::Tensor q = features.index_select(0, at::tensor(e.query, at::kLong));
  const at::Tensor pred = prototype_logits(s, q, spec.n_way, spec.k_shot).argmax(-1);
  const at::Tensor truth = data::episode_labels(spec.n_way, spec.q_query);
  return 100.0 * pred.eq(truth).to(at::kDouble).mean().item<double>();
}

Accuracy evaluate_prototypes(const at::Tensor& features, const data::ImageSet& set, const data::EpisodeSpec& spec,
                             int episodes, std::uint64_t seed, dist::Communicator& comm) {
  const auto t0 = std::chrono::steady_clock::now();
  const data::EpisodeSampler sampler(set, spec);
  std::vector<double> mine;
  for (int i = comm.rank(); i < episodes; i += comm.size()) {
    auto rng = data::make_rng(seed, 0, static_cast<std::uint64_t>(i));
    mine.push_back(episode_accuracy(features, sampler.sample(rng), spec));
  }
  return summarize(all_gather_values(mine, episodes, comm),
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
}

}  // namespace lorarec::fewshot
