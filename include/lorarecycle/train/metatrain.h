// Meta-training of one shared meta-LoRA on the surrogate pool (DESIGN 2.5, 2.6), data parallel.
//
// Step s draws `episodes_per_step` episodes (global). Episode slot j of step s is drawn from
// make_rng(seed, kEpisodeStream + j, s) and is computed by rank j mod W, so the schedule does not
// depend on the world size: world size 1 accumulates what W ranks split. Each rank's loss is the
// mean over its episodes; the gradients (plus a few counters) are averaged in ONE flat buffer per
// step, and every rank applies the same Adam update (replicas checked by hash every
// `hash_every` steps).
//
// Episode: N real (dataset) classes from the whole pool, K support + Q query images each, drawn
// from every LoRA's surrogates of that class (support and query may come from different
// teachers: cross-task interpolation); prototypes = mean support feature; logits =
// -squared Euclidean distance; CE on the queries. With probability `single_lora_prob` an episode
// takes its N classes and images from one LoRA and adds kl_weight * KL(teacher || student) on the queries,
// the teacher being that LoRA's stored logits (restricted to the episode's classes).
//
// Files under <work> (default <out>.work): checkpoint.safetensors (LoRA, Adam, step, counters;
// written every `checkpoint_every` steps, at the end, and when a rank gets SIGTERM/SIGUSR1),
// metrics.jsonl (train and validation lines). The result is a PEFT adapter directory <out> with
// metatrain.json (the report) beside the adapter files.
#pragma once

#include <c10/core/Device.h>

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "lorarecycle/data/image_set.h"
#include "lorarecycle/data/surrogate_pool.h"
#include "lorarecycle/model/vit.h"

namespace lorarec::dist {
class Communicator;
}

namespace lorarec::train {

// A pool's distinct images: `rows`, the first pool row of each distinct image (same bytes), in row
// order, and `of_row`, for every pool row the index in `rows` of its image. invert --retrieve gives a
// public glyph to every LoRA that ranks it, so metatrain computes the features of --distill-pool's
// images once per distinct image.
struct DistinctRows {
  std::vector<int64_t> rows, of_row;
};
DistinctRows distinct_rows(data::SurrogatePool& pool);

// The pool rows of one training episode. picked[c] holds K + Q rows of episode class c (support
// first); classes[c] is its pool class (index into classes()). Single-LoRA episodes (with
// probability single_prob, from one of `single_files`) take N labels of one file: `file` >= 0 and
// cols[c] is the label (teacher-logit column) of episode class c. Consumes rng deterministically.
struct EpisodeRows {
  std::vector<std::vector<int64_t>> picked;
  std::vector<int> classes;
  int file = -1;
  std::vector<int64_t> cols;
};
// disjoint_teachers: in an episode over real classes, the K support images of a class come from one
// LoRA (a pool file) and its Q queries from the other LoRAs that cover the class (metatrain refuses,
// before training, a pool where a class cannot be drawn so).
// neighbours (non-null; --hard-classes): an episode over real classes takes its first class at
// random and the other N - 1 among that class's entry of neighbours (pool class indices).
EpisodeRows draw_episode(const data::SurrogatePool& pool, const data::EpisodeSpec& spec,
                         const std::vector<int>& single_files, double single_prob, std::mt19937_64& rng,
                         bool disjoint_teachers = false, const std::vector<std::vector<int>>* neighbours = nullptr);
// For --hard-classes M: per pool class, the M other classes whose prototypes (mean feature of the
// class's images, features [pool rows, D] in pool row order) lie nearest (squared distance), nearest
// first. InputError when M is outside [1, classes - 1].
std::vector<std::vector<int>> nearest_classes(const data::SurrogatePool& pool, const at::Tensor& features, int m);
// The support-file choices of a real class under disjoint_teachers: the files (pool file indices)
// that hold >= K of its images while the class's other files hold >= Q, each with its rows of the
// class. Empty: the class cannot be drawn with disjoint teachers.
std::vector<std::pair<int, std::vector<int64_t>>> disjoint_support_files(const data::SurrogatePool& pool,
                                                                         const data::SurrogatePool::Class& cls,
                                                                         const data::EpisodeSpec& spec);

struct MetaTrainConfig {
  std::string model;                 // VFM directory
  std::string pool;                  // surrogate pool directory (invert --out)
  std::string val;                   // HDF5 image set of the validation classes (real images); empty: no validation
  std::string out;                   // PEFT adapter directory of the meta-LoRA
  std::string work;                  // default <out>.work
  data::EpisodeSpec spec{5, 1, 15};  // training episodes
  int64_t steps = 2000;              // optimizer steps
  int episodes_per_step = 0;         // global; 0 = one per rank. Must be a multiple of the world size.
  double lr = 1e-3, lr_min = 1e-5;   // Adam; schedule cycles: warm-up from lr_min to lr, cosine back
  int64_t cycle = 100;               // steps per cycle (official 100); 0 = one cycle over the whole run
  int64_t warmup = 25;               // warm-up steps of a cycle (official 25)
  double clip_norm = 0;              // gradient-norm clip (0 = off)
  model::LoraConfig lora;            // meta-LoRA shape (no head)
  std::string init = "fresh";        // fresh (A random, B 0) | zoo-mean (rank-r SVD of the pool's LoRAs' mean
                                     // delta) | a PEFT adapter directory (rank-r SVD of its delta)
  bool init_from_dir() const { return init != "fresh" && init != "zoo-mean"; }  // the last of those
  // With init zoo-mean or a directory: the meta-LoRA may adapt modules and layers the start does
  // not; those keep the fresh start (A random, B 0), so the run still starts at the start's function.
  bool init_partial = false;
  // Train one scale per rank-1 component (B diag(s) A, A and B frozen at the start, s from 1)
  // instead of A and B; needs init zoo-mean (the scales then multiply the singular values of the
  // zoo's mean delta; at full rank the start is lora-avg exactly).
  bool scales_only = false;
  double mask_ratio = 0;  // feed each surrogate with its top-(1-x) patches by stored score
  // Which patches a mask keeps: "top" (by the stored CLS-attention score, the paper's) or "random"
  // (one of mask_variants fixed random subsets of each image, drawn per image and step).
  std::string mask_select = "top";
  int mask_variants = 8;
  bool random_masks() const { return mask_ratio > 0 && mask_select == "random"; }
  bool flip = true;  // random horizontal flip per image
  int jitter = 0;    // random roll of each image by up to this many pixels (0 = off)
  // Random affine map of each training image with this strength (0 = off): at 1, rotation within
  // +-10 degrees, scale 0.9-1.1, shear +-0.1 and a shift of up to 1/16 of the image per axis; the
  // ranges scale linearly with it (data::random_affine). The map is about the centre; what it brings
  // in from outside the image is white (the glyph benchmark's images are dark on white).
  double affine = 0;
  // Share of the multi-LoRA episodes whose classes are composed (0 = off): each of the N classes of
  // such an episode becomes a new class made of two real classes, every image of it one image of
  // the first with the part past a cut (the right of a vertical cut or the bottom of a horizontal
  // one, at 3/8 to 5/8 of the side) replaced by that part of an image of the second; cut, side and
  // second class drawn per class, so all images of a composed class share them (as characters
  // built from the same two components). More classes than the pool holds (task augmentation).
  double compose = 0;
  // Where a composed image's part past the cut comes from: "other" (above: a second class, per
  // class) or "same": another image of the image's own class, drawn per image with its own cut, so
  // the class stays itself and its images mix two of its images (in a pool by real class, mostly
  // of two teachers: variants between the teachers' versions of a class).
  std::string compose_partner = "other";
  bool gray = false;               // average the surrogates' channels (for VFMs of grey images)
  double single_lora_prob = 0.1;   // share of episodes drawn from one LoRA (with the KL term)
  bool disjoint_teachers = false;  // support and queries of a class from different LoRAs (draw_episode)
  int hard_classes = 0;         // > 0: an episode's other classes among its first class's this many nearest (bare VFM)
  double kl_weight = 1.0;       // weight of the KL term on single-LoRA episodes
  double temperature = 1.0;     // training logits = -squared distance / temperature
  double distill_weight = 0.0;  // weight of the feature distillation to each image's own LoRA (0 = off)
  bool distill_dense = false;   // with a mask ratio: the teacher's features of the whole image, not of the kept patches
  std::string distill_pool;     // a second pool whose images carry the distillation term instead of the episodes'
                                // (e.g. invert --retrieve: public images), each under its own LoRA, dense; empty: off
  int distill_images = 0;       // images of distill_pool per episode and step (0: as many as an episode holds)
  // Share of each distill_pool image's patches the student does not see (0 = whole images): every
  // step, a random (1 - x) of them (drawn per image and step, with the image) and the CLS token go
  // forward; the targets stay those of the whole image. A cheaper forward for more images per step.
  double distill_mask_ratio = 0.0;
  // Weight of distill_pool's distillation term. < 0 (unset): distill_weight, and the episodes' own
  // distillation is off (the pool replaces it). >= 0: this weight, and distill_weight stays the
  // episodes' own-LoRA distillation, so both terms run (e.g. the main recipe plus an anchor).
  double distill_pool_weight = -1.0;
  // Whose features distill_pool's term distils: "own" (each image's own LoRA, its file's
  // lora_path), "start" (the meta-LoRA's start: the bare VFM, or what --init sets; an anchor,
  // learning without forgetting), "zoo-mean" (the mean of the features under every LoRA that
  // distill_pool's files name: the zoo's feature ensemble), "zoo-concat" (those LoRAs' features
  // concatenated, cut to the model's width and turned onto the zoo's mean features:
  // zoo_concat_features) or "zoo" (no feature targets: the pairwise squared distances among an
  // episode's distill_pool images matched to the zoo's, their mean over those LoRAs, i.e. the
  // geometry of the LoRAs' features concatenated; distance_gap).
  std::string distill_targets = "own";
  // With distill_targets "zoo": 0 = distance_gap (squared error of the distances); R > 0 =
  // neighbour_gap at softmax temperature R (the near neighbours weigh most).
  double distill_zoo_softmax = 0.0;
  double public_distill_weight() const { return distill_pool_weight >= 0 ? distill_pool_weight : distill_weight; }
  double episode_distill_weight() const {
    return distill_pool.empty() || distill_pool_weight >= 0 ? distill_weight : 0.0;
  }
  // Weight of the feature-statistics alignment: feature_stats_gap between the episodes' images and
  // distill_pool's (public images), both under the meta-LoRA, per episode (needs distill_pool; 0 = off).
  double align_weight = 0.0;
  // Images of distill_pool per episode and step: distill_images, or (0) as many as an episode holds.
  int distill_images_per_episode() const {
    return distill_images > 0 ? distill_images : spec.n_way * (spec.k_shot + spec.q_query);
  }
  int64_t val_every = 200;    // steps between validations (0 = only at start and end)
  std::string keep = "last";  // the meta-LoRA written: last (after --steps) | best (highest validation mean)
  int val_episodes = 300;     // fixed validation episodes
  data::EpisodeSpec val_spec{5, 1, 15};
  int64_t checkpoint_every = 200;
  int64_t hash_every = 100;  // replica check (0 = only at the end)
  int64_t log_every = 20;
  int64_t cache_mb = 2048;  // budget for holding the pool's images in memory
  int max_bad_steps = 10;   // consecutive non-finite steps before aborting
  bool prefetch = true;     // prepare the next steps' batches on a second thread (the CLI: --prefetch auto|on|off)
  // Threads that copy a batch's images (flips in the same pass; a GPU step's into page-locked
  // memory); the CLI's --data-threads, resolve_data_threads.
  int data_threads = 1;
  // When the host reads the step's results (loss, accuracy, finite check, stop flag): "step" after
  // every step; "log" only every log_every steps and at checkpoints (the finite check, gradient
  // clipping and the skipped update stay on the device, so a GPU step does not wait for the host);
  // "auto": log on GPUs, step on CPUs. A non-finite run (--max-bad-steps) and a stop signal are
  // then acted on at those reads.
  std::string host_sync = "auto";
  bool sync_timing = false;  // barrier before the all-reduce: its share then excludes waiting for the slowest rank
  model::Precision precision = model::Precision::kFp32;  // of the ViT (ClipVision::set_precision)
  std::uint64_t seed = 0;
  bool resume = false;     // continue from the checkpoint (none: start fresh)
  bool restart = false;    // discard an existing checkpoint
  int64_t stop_after = 0;  // > 0: checkpoint and stop after this many steps of this run
  void validate() const;
};

// How far apart two sets of features lie in their first two moments, scale-free: (|mean_a -
// mean_b|^2 + |sd_a - sd_b|^2) / mean |b_i|^2 (per-dimension means and standard deviations over the
// rows of a [n_a, D] and b [n_b, D]; the denominator without gradient). 0 for identical statistics;
// unchanged when both are scaled alike.
at::Tensor feature_stats_gap(const at::Tensor& a, const at::Tensor& b);

// How far the pairwise squared distances among the rows of f [n, D] lie from a zoo's: t [n, L, D']
// holds each row's features under L LoRAs, and the zoo's distance of rows i and j is the mean over
// the LoRAs of |t_il - t_jl|^2 (the squared distance of the L features concatenated, over L). The
// mean over pairs i != j of ((|f_i - f_j|^2 - that) / m)^2, m the zoo's mean distance over the pairs
// (without gradient through t): 0 when f has the zoo's distances, unchanged when both are scaled
// alike, invariant to f's rotations and shifts (prototype classification is).
at::Tensor distance_gap(const at::Tensor& f, const at::Tensor& t);

// Feature targets that carry the geometry of a zoo's features concatenated: t [n, L, D] (each row
// under L LoRAs) -> [n, D]. The concatenation over sqrt L (whose squared distances are the mean over
// the LoRAs of theirs, as distance_gap's zoo) is cut to its top D principal components over the n
// rows, then turned and scaled (orthogonal Procrustes with one scale) to lie closest to the mean of
// the LoRAs' features, and shifted to their mean: the targets start near the zoo's mean features (a
// meta-LoRA from lora-avg starts near them), and their pairwise distances are the concatenation's
// within its top D components, times the scale. Computed in double; the returned dtype is t's.
// InputError unless t is [n >= 2, L >= 1, D >= 1].
at::Tensor zoo_concat_features(const at::Tensor& t);

// The same comparison through each row's neighbours: for row i, the softmax over the other rows j of
// -d_ij / (r x mean d), for f's distances (scaled by f's own mean distance) and for the zoo's (by
// theirs); the mean over i of KL(zoo || f). 0 when f's distances are the zoo's up to a common scale;
// unchanged when f alone is scaled, rotated or shifted. Small r weighs the nearest rows most.
at::Tensor neighbour_gap(const at::Tensor& f, const at::Tensor& t, double r);

// --data-threads: `asked` when > 0; 0 (auto) = on a GPU the rank's CPUs beside its training thread
// (cpus: its affinity mask or share of the node), 1 to 8, on a CPU 1. InputError below 0.
int resolve_data_threads(int asked, const c10::Device& device, int cpus);

struct MetaTrainResult {
  bool finished = false;  // false: stopped early (signal or stop_after), checkpoint written
  int64_t step = 0;
  std::string report;  // JSON (metatrain.json) when finished
};

// Collective. Exit codes of the CLI: 0 finished, 75 stopped with a checkpoint (resume later).
MetaTrainResult run_metatrain(const MetaTrainConfig& cfg, dist::Communicator& comm, const c10::Device& device);

// Patch scores [B, P] (P = grid x grid) of the horizontally flipped images.
at::Tensor flip_patch_scores(const at::Tensor& scores, int64_t grid);
// The patches fed for a mask ratio: the top (P - int(ratio * P)) by score, in ascending patch order.
// scores [B, P] -> int64 [B, T].
at::Tensor top_patches(const at::Tensor& scores, double ratio);

// --mask-select random: the scores [rows.size(), P] whose top patches are variant variants[i]'s
// fixed random subset of image rows[i] (uniform, a function of seed, row and variant only).
at::Tensor random_mask_scores(const std::vector<int64_t>& rows, const std::vector<int>& variants, int64_t num_patches,
                              std::uint64_t seed);

// --affine: images uint8 [B, S, S, C] mapped by theta [B, 2, 3] (data::random_affine's matrices)
// with bilinear interpolation; what the map brings in from outside the image is white (255). The result is
// uint8 [B, S, S, C], in page-locked memory when `pinned`.
at::Tensor affine_images(const at::Tensor& u8, const at::Tensor& theta, bool pinned = false);
// --compose: image i of u8 [B, S, S, C] with its part past cuts[i] = {axis, position} taken from
// the next image of parts (one [S, S, C] image per cut that is not 0, in order): axis 1 replaces
// rows >= position, 2 columns >= position, 0 leaves the image as it is. In place; returns u8.
at::Tensor compose_images(at::Tensor u8, const at::Tensor& parts, const std::vector<std::array<int, 2>>& cuts);

// Installs SIGTERM/SIGUSR1 handlers that set a flag (checked once per step); returns the flag.
// Tests may set the flag through request_stop().
bool stop_requested();
void request_stop();
void install_stop_handlers();

}  // namespace lorarec::train
