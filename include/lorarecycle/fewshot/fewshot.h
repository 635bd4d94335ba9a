// Tuning-free few-shot evaluation with class prototypes (DESIGN 2.7): each query gets the class
// of the nearest prototype (mean support feature) by squared Euclidean distance.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "lorarecycle/data/image_set.h"

namespace lorarec::dist {
class Communicator;
}
namespace lorarec::model {
class ClipVision;
class Lora;
}  // namespace lorarec::model

namespace lorarec::fewshot {

// Accuracy in percent over episodes: mean +- 1.96 * std / sqrt(n) (population std, as the
// official code), with the episode rate.
struct Accuracy {
  double mean = 0, ci95 = 0;
  int64_t episodes = 0;
  double seconds = 0;
  std::vector<double> values;  // per episode, in the episode list's order (summarize keeps its input)
  double tasks_per_s() const { return seconds > 0 ? episodes / seconds : 0; }
};
Accuracy summarize(const std::vector<double>& accuracies, double seconds);

// Two methods scored on the same episode list, compared episode by episode: a[i] - b[i] over the
// first min(|a|, |b|) episodes, summarised as summarize does (mean +- 1.96 std / sqrt(n)). Episodes
// differ far more in difficulty than methods do within one, so this interval is much narrower than
// the two methods' own and says whether one beats the other on these episodes. Throws when either
// is empty.
Accuracy paired_difference(const std::vector<double>& a, const std::vector<double>& b);

// Values of items dealt round-robin over `world` ranks (rank r took items r, r + world, ...),
// concatenated in rank order, put back in item order (all_gather_values' last step).
std::vector<double> round_robin_to_order(const std::vector<double>& gathered, int world);

// The one batched-embedding loop: features (float, CPU) of rows [begin, end) of an image source,
// `batch_size` images per forward pass; images(first, count) returns their uint8 [count, S, S, C]
// pixels, and on_batch(count), when given, is called after each batch (progress). No gradients.
at::Tensor embed_rows(const model::ClipVision& vit, const model::Lora* lora, int64_t begin, int64_t end, int batch_size,
                      const std::function<at::Tensor(int64_t, int64_t)>& images,
                      const std::function<void(int64_t)>& on_batch = {});

// Collective. Features of every image of the set, rows split over ranks, the whole [N, D] float
// CPU tensor returned on every rank. No gradients.
at::Tensor embed_all(const model::ClipVision& vit, const model::Lora* lora, const data::ImageSet& set,
                     dist::Communicator& comm, int batch_size = 256);

// Collective. The values of `total` items dealt round-robin over the ranks (rank r holds those of
// items r, r + world, ..., in that order), on every rank in item order: per-episode accuracies of
// episodes split over ranks, in the episode list's order whatever the world size.
std::vector<double> all_gather_values(const std::vector<double>& mine, int64_t total, dist::Communicator& comm);

// Logits of queries [M, D] against prototypes [C, D]: -||q - p||^2, [M, C].
at::Tensor prototype_distances(const at::Tensor& query, const at::Tensor& protos);
// Prototypes [C, D] of labelled features (labels int64 in [0, C), any number per class, every
// class at least one): the mean feature of each class.
at::Tensor class_prototypes(const at::Tensor& features, const at::Tensor& labels, int64_t C);

// Prototypes [N, D] of an episode's support features [N*K, D], class-major: the mean of each class's K.
at::Tensor episode_prototypes(const at::Tensor& support, int n_way, int k_shot);

// Logits of queries against prototypes: -||q - p||^2. support [N*K, D] class-major, query [M, D].
at::Tensor prototype_logits(const at::Tensor& support, const at::Tensor& query, int n_way, int k_shot);

// Percent of correctly classified queries of one episode, from precomputed features [N_set, D].
double episode_accuracy(const at::Tensor& features, const data::Episode& episode, const data::EpisodeSpec& spec);

// Collective. A fixed list of `episodes` episodes (episode i drawn from make_rng(seed, 0, i), so the
// list does not depend on the world size), split over ranks, scored with precomputed features.
Accuracy evaluate_prototypes(const at::Tensor& features, const data::ImageSet& set, const data::EpisodeSpec& spec,
                             int episodes, std::uint64_t seed, dist::Communicator& comm);

}  // namespace lorarec::fewshot
