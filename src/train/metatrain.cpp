#include "lorarecycle/train/metatrain.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <nlohmann/json.hpp>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cmath>
#include <condition_variable>
#include <csignal>
#include <cstring>
#include <deque>
#include <exception>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <optional>
#include <set>
#include <sstream>
#include <thread>
#include <unordered_map>

#ifdef LORAREC_TORCH_HAS_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include "lorarecycle/data/surrogate_pool.h"
#include "lorarecycle/dist/communicator.h"
#include "lorarecycle/fewshot/fewshot.h"
#include "lorarecycle/io/hdf5.h"
#include "lorarecycle/io/safetensors.h"
#include "lorarecycle/model/peft.h"
#include "lorarecycle/optim/optim.h"
#include "lorarecycle/util/env.h"
#include "lorarecycle/util/error.h"
#include "lorarecycle/util/fs.h"
#include "lorarecycle/util/log.h"
#include "lorarecycle/util/op_trace.h"
#include "lorarecycle/util/phase_clock.h"
#include "lorarecycle/util/progress.h"
#include "lorarecycle/util/provenance.h"

namespace lorarec::train {
namespace {
using json = nlohmann::json;
namespace stdfs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr const char* kCheckpoint = "checkpoint.safetensors";
constexpr std::uint64_t kEpisodeStream = 0x3000;  // + episode slot
constexpr std::uint64_t kValSeedOffset = 0x5eed;
constexpr std::uint64_t kMaskStream = 0x6000;     // + mask variant (--mask-select random)
constexpr std::uint64_t kDistillStream = 0x7000;  // + episode slot (--distill-pool images)
constexpr int64_t kWarmSteps = 2;  // excluded from the throughput figures and the phase profile (first touches)

volatile std::sig_atomic_t g_stop = 0;
extern "C" void on_stop_signal(int sig) {
  g_stop = 1;
  if (sig == SIGTERM) dist::note_stop_signal();
}

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Peak bytes the caching allocator handed out on a CUDA device since the last reset (-1: no CUDA).
double cuda_peak_mb(const c10::Device& device, bool reset) {
#ifdef LORAREC_TORCH_HAS_CUDA
  if (device.is_cuda()) {
    namespace alloc = c10::cuda::CUDACachingAllocator;
    if (reset) alloc::resetPeakStats(device.index());
    const auto stats = alloc::getDeviceStats(device.index());
    return double(stats.allocated_bytes[0].peak) / (1 << 20);  // index 0: all pools (StatType::AGGREGATE)
  }
#endif
  (void)device;
  (void)reset;
  return -1;
}

double peak_rss_mb() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1024.0;  // Linux: kilobytes
}

}  // namespace

bool stop_requested() { return g_stop != 0; }
void request_stop() { g_stop = 1; }
void install_stop_handlers() {
  std::signal(SIGTERM, on_stop_signal);
  std::signal(SIGUSR1, on_stop_signal);
}

std::vector<std::pair<int, std::vector<int64_t>>> disjoint_support_files(const data::SurrogatePool& pool,
                                                                         const data::SurrogatePool::Class& cls,
                                                                         const data::EpisodeSpec& s) {
  std::map<int, std::vector<int64_t>> by_file;
  const auto& files = pool.files();
  for (int64_t r : cls.rows) {
    const auto it = std::upper_bound(files.begin(), files.end(), r,
                                     [](int64_t row, const data::SurrogatePool::File& f) { return row < f.first_row; });
    by_file[static_cast<int>(it - files.begin()) - 1].push_back(r);
  }
  std::vector<std::pair<int, std::vector<int64_t>>> out;
  for (auto& [f, rows] : by_file)
    if (static_cast<int>(rows.size()) >= s.k_shot && static_cast<int>(cls.rows.size() - rows.size()) >= s.q_query)
      out.emplace_back(f, std::move(rows));
  return out;
}

EpisodeRows draw_episode(const data::SurrogatePool& pool, const data::EpisodeSpec& s,
                         const std::vector<int>& single_files, double single_prob, std::mt19937_64& rng,
                         bool disjoint_teachers, const std::vector<std::vector<int>>* neighbours) {
  std::uniform_real_distribution<double> u(0, 1);
  EpisodeRows ep;
  const bool single = !single_files.empty() && single_prob > 0 && u(rng) < single_prob;
  // Each of the N classes: the rows to draw from (a real class over every LoRA, or one LoRA's label).
  std::vector<const std::vector<int64_t>*> sources;
  if (single) {
    ep.file = single_files[std::uniform_int_distribution<size_t>(0, single_files.size() - 1)(rng)];
    const auto& f = pool.files()[ep.file];
    for (int64_t k : data::sample_without_replacement(static_cast<int64_t>(f.num_classes), s.n_way, rng)) {
      sources.push_back(&f.local_rows[k]);
      ep.cols.push_back(k);
      ep.classes.push_back(f.classes[k]);
    }
  } else if (neighbours) {  // one class at random, the others among its nearest
    const int first = static_cast<int>(std::uniform_int_distribution<size_t>(0, pool.classes().size() - 1)(rng));
    const auto& near = (*neighbours)[first];
    ep.classes.push_back(first);
    for (int64_t k : data::sample_without_replacement(static_cast<int64_t>(near.size()), s.n_way - 1, rng))
      ep.classes.push_back(near[k]);
    for (int k : ep.classes) sources.push_back(&pool.classes()[k].rows);
  } else {
    for (int64_t k : data::sample_without_replacement(static_cast<int64_t>(pool.classes().size()), s.n_way, rng)) {
      sources.push_back(&pool.classes()[k].rows);
      ep.classes.push_back(static_cast<int>(k));
    }
  }
  ep.picked.resize(s.n_way);
  for (int c = 0; c < s.n_way; ++c) {
    const auto& cr = *sources[c];
    if (disjoint_teachers && !single) {  // K support rows from one LoRA, Q queries from the others
      const auto choices = disjoint_support_files(pool, pool.classes()[ep.classes[c]], s);
      if (choices.empty()) throw RuntimeError("draw_episode: a class cannot be drawn with disjoint teachers");
      const auto& [file, own] = choices[std::uniform_int_distribution<size_t>(0, choices.size() - 1)(rng)];
      for (int64_t k : data::sample_without_replacement(static_cast<int64_t>(own.size()), s.k_shot, rng))
        ep.picked[c].push_back(own[k]);
      std::vector<int64_t> others;
      for (int64_t r : cr)
        if (std::find(own.begin(), own.end(), r) == own.end()) others.push_back(r);
      for (int64_t k : data::sample_without_replacement(static_cast<int64_t>(others.size()), s.q_query, rng))
        ep.picked[c].push_back(others[k]);
      continue;
    }
    for (int64_t k : data::sample_without_replacement(static_cast<int64_t>(cr.size()), s.k_shot + s.q_query, rng))
      ep.picked[c].push_back(cr[k]);
  }
  return ep;
}

std::vector<std::vector<int>> nearest_classes(const data::SurrogatePool& pool, const at::Tensor& features, int m) {
  const int C = static_cast<int>(pool.classes().size());
  if (m < 1 || m > C - 1)
    throw InputError("metatrain: --hard-classes " + std::to_string(m) + " must be in [1, " + std::to_string(C - 1) +
                     "] (the pool's classes but one)");
  const at::Tensor f = features.to(at::kDouble);
  std::vector<at::Tensor> protos;
  for (const auto& c : pool.classes()) protos.push_back(f.index_select(0, at::tensor(c.rows, at::kLong)).mean(0));
  const at::Tensor p = at::stack(protos);
  const at::Tensor d = (p.unsqueeze(1) - p.unsqueeze(0)).pow(2).sum(-1);  // [C, C]
  std::vector<std::vector<int>> out(C);
  for (int c = 0; c < C; ++c) {
    const auto* row = d[c].contiguous().data_ptr<double>();
    std::vector<int> order(C);
    std::iota(order.begin(), order.end(), 0);
    order.erase(order.begin() + c);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return row[a] < row[b]; });
    out[c].assign(order.begin(), order.begin() + m);
  }
  return out;
}

DistinctRows distinct_rows(data::SurrogatePool& pool) {
  DistinctRows d;
  d.of_row.resize(static_cast<size_t>(pool.size()));
  std::unordered_multimap<uint64_t, int64_t> seen;  // hash of the bytes -> index into d.rows
  for (int64_t first = 0; first < pool.size(); first += 1024) {
    std::vector<int64_t> rows(static_cast<size_t>(std::min<int64_t>(1024, pool.size() - first)));
    std::iota(rows.begin(), rows.end(), first);
    const at::Tensor u8 = pool.images(rows).contiguous();
    const int64_t bytes = u8.numel() / static_cast<int64_t>(rows.size());
    for (size_t i = 0; i < rows.size(); ++i) {
      const uint8_t* p = u8.data_ptr<uint8_t>() + static_cast<int64_t>(i) * bytes;
      const uint64_t h = dist::fnv1a64(p, static_cast<size_t>(bytes));
      int64_t found = -1;
      for (auto [it, end] = seen.equal_range(h); it != end && found < 0; ++it) {
        const at::Tensor other = pool.images({d.rows[static_cast<size_t>(it->second)]}).contiguous();
        if (std::memcmp(other.data_ptr<uint8_t>(), p, static_cast<size_t>(bytes)) == 0) found = it->second;
      }
      if (found < 0) {
        found = static_cast<int64_t>(d.rows.size());
        d.rows.push_back(rows[i]);
        seen.emplace(h, found);
      }
      d.of_row[static_cast<size_t>(rows[i])] = found;
    }
  }
  return d;
}

at::Tensor flip_patch_scores(const at::Tensor& scores, int64_t grid) {
  return scores.view({scores.size(0), grid, grid}).flip({2}).reshape({scores.size(0), -1});
}

at::Tensor top_patches(const at::Tensor& scores, double ratio) {
  const int64_t P = scores.size(1);
  const int64_t keep = P - static_cast<int64_t>(ratio * double(P));
  const at::Tensor idx = std::get<1>(scores.topk(keep, 1, true, false));
  return std::get<0>(idx.sort(1));
}

at::Tensor affine_images(const at::Tensor& u8, const at::Tensor& theta, bool pinned) {
  LORAREC_CHECK(u8.dim() == 4 && u8.scalar_type() == at::kByte, "affine_images: need uint8 [B, S, S, C]");
  const at::NoGradGuard no_grad;  // theta's shape: data::affine_map checks it
  const at::Tensor moved =
      data::affine_map(u8.permute({0, 3, 1, 2}).to(at::kFloat), theta, at::full({u8.size(3)}, 255.0, at::kFloat));
  at::Tensor out = at::empty(u8.sizes(), u8.options().pinned_memory(pinned));
  out.copy_(moved.round_().clamp_(0, 255).permute({0, 2, 3, 1}));
  return out;
}

at::Tensor compose_images(at::Tensor u8, const at::Tensor& parts, const std::vector<std::array<int, 2>>& cuts) {
  const auto composed = std::count_if(cuts.begin(), cuts.end(), [](const auto& c) { return c[0] != 0; });
  LORAREC_CHECK(u8.dim() == 4 && u8.scalar_type() == at::kByte && parts.dim() == 4 &&
                    parts.scalar_type() == at::kByte && parts.size(0) == composed &&
                    parts.sizes().slice(1) == u8.sizes().slice(1) && static_cast<int64_t>(cuts.size()) == u8.size(0),
                "compose_images: need uint8 [B, S, S, C], one cut per image and one part image per cut");
  int64_t j = 0;
  for (size_t i = 0; i < cuts.size(); ++i) {
    const auto [axis, pos] = cuts[i];
    if (axis == 0) continue;
    LORAREC_CHECK((axis == 1 || axis == 2) && pos >= 0 && pos <= u8.size(axis),
                  "compose_images: a cut outside the image");
    const auto n = u8.size(axis) - pos;
    u8[static_cast<int64_t>(i)].narrow(axis - 1, pos, n).copy_(parts[j++].narrow(axis - 1, pos, n));
  }
  return u8;
}

at::Tensor random_mask_scores(const std::vector<int64_t>& rows, const std::vector<int>& variants, int64_t num_patches,
                              std::uint64_t seed) {
  if (variants.size() != rows.size()) throw RuntimeError("random_mask_scores: one variant per row needed");
  at::Tensor out = at::empty({static_cast<int64_t>(rows.size()), num_patches}, at::kFloat);
  float* o = out.data_ptr<float>();
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  for (size_t i = 0; i < rows.size(); ++i) {
    auto rng = data::make_rng(seed, kMaskStream + static_cast<std::uint64_t>(variants[i]),
                              static_cast<std::uint64_t>(rows[i]));
    for (int64_t j = 0; j < num_patches; ++j) o[i * num_patches + j] = u(rng);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

// --distill-images and --distill-mask-ratio: in range, and the mask with a --distill-pool to mask.
static void check_distill_images(const MetaTrainConfig& c) {
  if (c.distill_images < 0) throw InputError("metatrain: --distill-images must be >= 0");
  if (!(c.distill_mask_ratio >= 0 && c.distill_mask_ratio < 1))
    throw InputError("metatrain: --distill-mask-ratio must be in [0, 1)");
  if (c.distill_mask_ratio > 0 && c.distill_pool.empty())
    throw InputError("metatrain: --distill-mask-ratio masks --distill-pool's images: give --distill-pool");
}

// --distill-targets: a known value, and (other than own) --distill-pool's distillation term on.
static void check_distill_targets(const MetaTrainConfig& c) {
  if (c.distill_targets != "own" && c.distill_targets != "start" && c.distill_targets != "zoo-mean" &&
      c.distill_targets != "zoo-concat" && c.distill_targets != "zoo")
    throw InputError("metatrain: --distill-targets must be own, start, zoo-mean, zoo-concat or zoo, not '" +
                     c.distill_targets + "'");
  if (c.distill_targets != "own" && c.distill_pool.empty())
    throw InputError("metatrain: --distill-targets " + c.distill_targets +
                     " concerns --distill-pool's term: give --distill-pool");
  if (c.distill_targets != "own" && c.public_distill_weight() <= 0)
    throw InputError("metatrain: --distill-targets " + c.distill_targets +
                     " sets the targets of --distill-pool's distillation term, which is off: "
                     "give --distill-weight > 0 (or --distill-pool-weight > 0)");
  if (!(c.distill_zoo_softmax >= 0) || !std::isfinite(c.distill_zoo_softmax))
    throw InputError("metatrain: --distill-zoo-softmax must be >= 0");
  if (c.distill_zoo_softmax > 0 && c.distill_targets != "zoo")
    throw InputError(
        "metatrain: --distill-zoo-softmax concerns --distill-targets zoo's term: give --distill-targets zoo");
  if (c.distill_zoo_softmax > 0 && c.distill_images_per_episode() < 3)
    throw InputError(
        "metatrain: --distill-zoo-softmax compares each image's neighbours: it needs --distill-images >= 3");
  if (c.distill_targets == "zoo" && c.distill_images_per_episode() < 2)
    throw InputError(
        "metatrain: --distill-targets zoo compares pairwise distances: it needs --distill-images >= 2 (0 = N (K+Q))");
}

void MetaTrainConfig::validate() const {
  if (model.empty() || pool.empty() || out.empty())
    throw InputError("metatrain: --model, --pool and --out are required");
  if (spec.n_way < 2 || spec.k_shot < 1 || spec.q_query < 1)
    throw InputError("metatrain: need --way >= 2, --shot >= 1, --query >= 1");
  if (val_spec.n_way < 2 || val_spec.k_shot < 1 || val_spec.q_query < 1)
    throw InputError("metatrain: need --val-way >= 2, --val-shot >= 1, --val-query >= 1");
  if (steps < 1) throw InputError("metatrain: --steps must be >= 1");
  if (episodes_per_step < 0) throw InputError("metatrain: --episodes-per-step must be >= 0");
  if (!(lr > 0) || !(lr_min >= 0) || lr_min > lr) throw InputError("metatrain: need 0 <= --lr-min <= --lr, --lr > 0");
  if (cycle < 0 || warmup < 0 || (cycle > 0 && warmup >= cycle))
    throw InputError("metatrain: need --cycle >= 0 and 0 <= --warmup < cycle");
  if (!(mask_ratio >= 0 && mask_ratio < 1)) throw InputError("metatrain: --mask-ratio must be in [0, 1)");
  if (jitter < 0) throw InputError("metatrain: --jitter must be >= 0");
  if (!(affine >= 0 && affine <= 4)) throw InputError("metatrain: --affine must be in [0, 4]");
  if (!(compose >= 0 && compose <= 1)) throw InputError("metatrain: --compose must be in [0, 1]");
  if (compose_partner != "other" && compose_partner != "same")
    throw InputError("metatrain: --compose-partner must be other or same, got '" + compose_partner + "'");
  if (compose_partner != "other" && compose == 0)
    throw InputError("metatrain: --compose-partner " + compose_partner +
                     " acts on composed episodes only: set --compose P > 0");
  if ((affine > 0 || compose > 0) && mask_ratio > 0 && mask_select == "top")
    throw InputError(std::string("metatrain: ") + (affine > 0 ? "--affine" : "--compose") +
                     " changes the images after --mask-select top chose their patches on the unchanged ones; use "
                     "--mask-select random with it");
  if (compose > 0 && episode_distill_weight() > 0)
    throw InputError(
        "metatrain: --compose makes images that no LoRA's stored features describe: it cannot run with the "
        "episodes' own distillation (--distill-weight without --distill-pool, or with --distill-pool-weight)");
  if (!(single_lora_prob >= 0 && single_lora_prob <= 1))
    throw InputError("metatrain: --single-lora-prob must be in [0, 1]");
  if (!(kl_weight >= 0)) throw InputError("metatrain: --kl-weight must be >= 0");
  if (!(temperature > 0) || !std::isfinite(temperature)) throw InputError("metatrain: --temperature must be > 0");
  if (!(distill_weight >= 0) || !std::isfinite(distill_weight))
    throw InputError("metatrain: --distill-weight must be >= 0");
  if (mask_select != "top" && mask_select != "random")
    throw InputError("metatrain: --mask-select must be top or random, got '" + mask_select + "'");
  if (mask_variants < 1) throw InputError("metatrain: --mask-variants must be >= 1");
  if (!(distill_pool_weight == -1.0 || (distill_pool_weight >= 0 && std::isfinite(distill_pool_weight))))
    throw InputError("metatrain: --distill-pool-weight must be >= 0 (or -1: unset)");
  check_distill_targets(*this);
  if (distill_pool_weight >= 0 && distill_pool.empty())
    throw InputError("metatrain: --distill-pool-weight weights --distill-pool's term: give --distill-pool");
  if (distill_dense && (episode_distill_weight() <= 0 || mask_ratio <= 0))
    throw InputError(
        "metatrain: --distill-dense changes the distillation targets under a mask: it needs "
        "--distill-weight > 0 on the episodes (no --distill-pool, or one with --distill-pool-weight) and "
        "--mask-ratio > 0");
  if (!(align_weight >= 0) || !std::isfinite(align_weight)) throw InputError("metatrain: --align-weight must be >= 0");
  if (!distill_pool.empty() && public_distill_weight() <= 0 && align_weight <= 0)
    throw InputError(
        "metatrain: --distill-pool carries the distillation or the alignment term: it needs --distill-weight > 0 or "
        "--align-weight > 0 (with --distill-pool-weight: that weight > 0 or --align-weight > 0)");
  if (align_weight > 0 && distill_pool.empty())
    throw InputError("metatrain: --align-weight aligns the episodes' features with --distill-pool's images: give one");
  if (align_weight > 0 && distill_images_per_episode() < 2)
    throw InputError(
        "metatrain: --align-weight compares feature spreads: it needs --distill-images >= 2 (0 = N (K+Q))");
  check_distill_images(*this);
  if (host_sync != "step" && host_sync != "log" && host_sync != "auto")
    throw InputError("metatrain: --host-sync must be step, log or auto, not '" + host_sync + "'");
  if (keep != "last" && keep != "best") throw InputError("metatrain: --keep must be last or best, not '" + keep + "'");
  if (keep == "best" && val.empty())
    throw InputError("metatrain: --keep best chooses by validation accuracy and needs --val");
  if (val_every < 0 || hash_every < 0 || checkpoint_every < 1 || log_every < 1)
    throw InputError("metatrain: --val-every, --hash-every >= 0; --checkpoint-every, --log-every >= 1");
  if (val_episodes < 1) throw InputError("metatrain: --val-episodes must be >= 1");
  if (cache_mb < 0) throw InputError("metatrain: --cache-mb must be >= 0");
  if (max_bad_steps < 1) throw InputError("metatrain: --max-bad-steps must be >= 1");
  if (resume && restart) throw InputError("metatrain: --resume and --restart exclude each other");
  if (stop_after < 0) throw InputError("metatrain: --stop-after must be >= 0");
  std::error_code ec;
  if (init_from_dir() && (init.empty() || !stdfs::is_regular_file(stdfs::path(init) / model::kPeftConfig, ec)))
    throw InputError("metatrain: --init must be fresh, zoo-mean or a PEFT adapter directory (with " +
                     std::string(model::kPeftConfig) + "), not '" + init +
                     "' (a resumed run needs its --init directory as it was)");
  if (init_partial && init == "fresh")
    throw InputError("metatrain: --init-partial concerns --init zoo-mean or an adapter directory, not fresh");
  if (init_partial && scales_only)
    throw InputError(
        "metatrain: --init-partial and --scales-only exclude each other (the scales of a module the "
        "start does not adapt would multiply B = 0)");
  if (scales_only && init != "zoo-mean")
    throw InputError(
        "metatrain: --scales-only needs --init zoo-mean (not fresh, whose B is 0, nor an adapter "
        "directory: the scales multiply the zoo's mean delta's singular values)");
}

namespace {

// One step's share of episodes for this rank, ready for the forward pass.
struct Batch {
  int64_t step = -1;
  at::Tensor pixels;                // [E_local * N(K+Q), 3, S, S] float (CPU), normalised, or
  at::Tensor u8;                    //   the uint8 [.., S, S, 3] images when the device normalises them
  at::Tensor patch_index;           // [same, T] int64, or undefined (all patches)
  std::vector<at::Tensor> teacher;  // per local episode: [N*Q, N] teacher logits, or undefined
  at::Tensor teacher_feat;          // [same rows as pixels, D] own-LoRA features (--distill-weight), or undefined
  at::Tensor distill_pixels, distill_u8, distill_feat;  // --distill-pool: its images (as pixels/u8) and targets
  at::Tensor distill_patch_index;  // --distill-mask-ratio: [distill rows, T] kept patches, or undefined (all)
  double prep_seconds = 0;
};

// Pool files usable for single-LoRA (KL) episodes: every label of the file has K+Q images.
std::vector<int> single_lora_files(const MetaTrainConfig& cfg, const data::SurrogatePool& pool) {
  const int need = cfg.spec.k_shot + cfg.spec.q_query;
  std::vector<int> out;
  for (size_t f = 0; f < pool.files().size(); ++f) {
    int usable = 0;
    for (const auto& r : pool.files()[f].local_rows) usable += static_cast<int>(r.size()) >= need;
    if (usable == pool.files()[f].num_classes && usable >= cfg.spec.n_way) out.push_back(static_cast<int>(f));
  }
  return out;
}

// The pool against the episodes, before any expensive work: InputError naming the option to change
// for too few classes or images per class; a warning when no single-LoRA episode can be drawn.
void check_pool_for_episodes(const MetaTrainConfig& cfg, const data::SurrogatePool& pool, int rank) {
  const int need = cfg.spec.k_shot + cfg.spec.q_query;
  for (const auto& c : pool.classes())
    if (static_cast<int>(c.rows.size()) < need)
      throw InputError(cfg.pool + ": dataset class " + std::to_string(c.id) + " has " + std::to_string(c.rows.size()) +
                       " images, fewer than K+Q = " + std::to_string(need) +
                       " (invert with a larger --per-class, or lower --shot/--query)");
  if (static_cast<int>(pool.classes().size()) < cfg.spec.n_way)
    throw InputError(cfg.pool + ": " + std::to_string(pool.classes().size()) + " classes, fewer than N = " +
                     std::to_string(cfg.spec.n_way) + " (lower --way, or invert a zoo that covers more classes)");
  if (cfg.disjoint_teachers)
    for (const auto& c : pool.classes())
      if (disjoint_support_files(pool, c, cfg.spec).empty())
        throw InputError(cfg.pool + ": dataset class " + std::to_string(c.id) + " is covered by " +
                         std::to_string(c.loras) + " LoRA(s) with " + std::to_string(c.rows.size()) +
                         " images: --disjoint-teachers needs K = " + std::to_string(cfg.spec.k_shot) +
                         " images from one LoRA and Q = " + std::to_string(cfg.spec.q_query) +
                         " from the others (a zoo that covers each class twice or more: zoo --classes)");
  if (cfg.hard_classes != 0 &&
      (cfg.hard_classes < cfg.spec.n_way - 1 || cfg.hard_classes >= static_cast<int>(pool.classes().size())))
    throw InputError("metatrain: --hard-classes " + std::to_string(cfg.hard_classes) + " must lie in [N - 1 = " +
                     std::to_string(cfg.spec.n_way - 1) + ", " + std::to_string(pool.classes().size() - 1) +
                     "] (an episode's other classes are drawn among that many nearest; 0 = off)");
  if (cfg.single_lora_prob > 0 && single_lora_files(cfg, pool).empty() && rank == 0)
    LOG_WARN("metatrain", cfg.pool << ": no pool file holds K+Q = " << need << " images of each of its classes, so no "
                                   << "single-LoRA (KL) episode is drawn and --single-lora-prob "
                                   << cfg.single_lora_prob << " has no effect (invert with --per-class >= " << need
                                   << ", or lower --shot/--query)");
}

// --gray: each image's channels averaged, uint8 [B, S, S, 3] in, [B, S, S, 1] out
// (model::preprocess_images repeats one channel into all the model's).
at::Tensor gray_u8(const at::Tensor& u8) { return u8.to(at::kFloat).mean(-1, true).round().to(at::kByte); }

// Draws and prepares batches; deterministic in (seed, slot, step).
class BatchMaker {
 public:
  // normalise_here: produce normalised float pixels (CPU training); else the uint8 images, for the
  // device to normalise (4x less to copy; a GPU does it in microseconds).
  // teacher_feat: [pool rows, V, 2, D] features of every image under its own LoRA, per mask variant
  // (V = --mask-variants with --mask-select random, else 1), unflipped and flipped (undefined: no
  // distillation).
  // neighbours: nearest_classes for --hard-classes (empty: classes drawn uniformly).
  BatchMaker(const MetaTrainConfig& cfg, data::SurrogatePool& pool, const model::ClipVisionConfig& vit, int episodes,
             int rank, int world, bool normalise_here, at::Tensor teacher_feat,
             std::vector<std::vector<int>> neighbours = {}, data::SurrogatePool* distill_pool = nullptr,
             at::Tensor distill_feat = {})
      : cfg_(cfg),
        pool_(pool),
        vit_(vit),
        episodes_(episodes),
        rank_(rank),
        world_(world),
        normalise_(normalise_here),
        teacher_feat_(std::move(teacher_feat)),
        neighbours_(std::move(neighbours)),
        distill_pool_(distill_pool),
        distill_feat_(std::move(distill_feat)) {
    grid_ = vit.image_size / vit.patch_size;
    single_files_ = single_lora_files(cfg, pool);
  }

  Batch make(int64_t step) {
    const auto t0 = Clock::now();
    const auto& s = cfg_.spec;
    Batch b;
    b.step = step;
    std::vector<int64_t> rows;
    std::vector<bool> flips;
    std::vector<int> variants;                // per image, with --mask-select random
    std::vector<std::pair<int, int>> shifts;  // per image (dy, dx) with --jitter
    std::vector<float> affines;               // per image 6 values of its map's matrix with --affine
    std::vector<std::array<int, 2>> cuts;     // per image with --compose: {axis, position} (0: not composed)
    std::vector<int64_t> partners;            // per composed image: the row its part past the cut comes from
    for (int j = rank_; j < episodes_; j += world_) {
      auto rng =
          data::make_rng(cfg_.seed, kEpisodeStream + static_cast<std::uint64_t>(j), static_cast<std::uint64_t>(step));
      std::uniform_real_distribution<double> u(0, 1);
      const EpisodeRows ep = draw_episode(pool_, s, single_files_, cfg_.single_lora_prob, rng, cfg_.disjoint_teachers,
                                          neighbours_.empty() ? nullptr : &neighbours_);
      const auto& picked = ep.picked;
      const bool single = ep.file >= 0;
      const int file = ep.file;
      const auto& cols = ep.cols;
      std::vector<int64_t> query_rows;
      if (cfg_.compose > 0) add_composition(s, ep, u(rng) < cfg_.compose && !single, rng, cuts, partners);
      for (int c = 0; c < s.n_way; ++c)
        for (int k = 0; k < s.k_shot; ++k) rows.push_back(picked[c][k]);
      for (int c = 0; c < s.n_way; ++c)
        for (int k = s.k_shot; k < s.k_shot + s.q_query; ++k) {
          rows.push_back(picked[c][k]);
          query_rows.push_back(picked[c][k]);
        }
      for (int i = 0; i < s.n_way * (s.k_shot + s.q_query); ++i) flips.push_back(cfg_.flip && u(rng) < 0.5);
      if (cfg_.random_masks()) {
        std::uniform_int_distribution<int> dv(0, cfg_.mask_variants - 1);
        for (int i = 0; i < s.n_way * (s.k_shot + s.q_query); ++i) variants.push_back(dv(rng));
      }
      if (cfg_.jitter > 0) {
        std::uniform_int_distribution<int> d(-cfg_.jitter, cfg_.jitter);
        for (int i = 0; i < s.n_way * (s.k_shot + s.q_query); ++i) {
          const int dy = d(rng), dx = d(rng);
          shifts.emplace_back(dy, dx);
        }
      }
      if (cfg_.affine > 0)
        for (int i = 0; i < s.n_way * (s.k_shot + s.q_query); ++i) {
          const std::array<float, 6> m = data::random_affine(cfg_.affine, rng);
          affines.insert(affines.end(), m.begin(), m.end());
        }
      if (single && cfg_.kl_weight > 0) {
        const auto& f = pool_.files()[file];
        std::vector<int64_t> local_rows;
        for (int64_t r : query_rows) local_rows.push_back(r - f.first_row);
        b.teacher.push_back(pool_.teacher_logits(file)
                                .index_select(0, at::tensor(local_rows, at::kLong))
                                .index_select(1, at::tensor(cols, at::kLong)));
      } else {
        b.teacher.emplace_back();
      }
    }
    if (teacher_feat_.defined()) {
      std::vector<int64_t> flat;
      const int64_t V = teacher_feat_.size(1);  // 1: one target per image (top patches, dense targets)
      for (size_t i = 0; i < rows.size(); ++i)
        flat.push_back((rows[i] * V + (V > 1 ? variants[i] : 0)) * 2 + (flips[i] ? 1 : 0));
      b.teacher_feat = teacher_feat_.view({-1, teacher_feat_.size(-1)}).index_select(0, at::tensor(flat, at::kLong));
    }
    auto [u8, scores] = images_and_scores(rows, flips, variants, shifts, cuts, partners);
    if (!affines.empty()) u8 = affine_images(u8, at::tensor(affines, at::kFloat).view({-1, 2, 3}), u8.is_pinned());
    if (normalise_)
      b.pixels = model::preprocess_images(u8, vit_, c10::Device(at::kCPU));
    else
      b.u8 =
          u8.is_pinned() ? u8 : u8.pin_memory();  // a GPU step: copied without waiting (page-locked; --gray's copy not)
    if (scores.defined()) b.patch_index = top_patches(scores, cfg_.mask_ratio);
    if (distill_pool_ != nullptr) add_distill_images(b, step);
    if (!normalise_) {  // the rest of what a GPU step copies, page-locked too
      if (b.patch_index.defined()) b.patch_index = b.patch_index.pin_memory();
      if (b.distill_patch_index.defined()) b.distill_patch_index = b.distill_patch_index.pin_memory();
      if (b.teacher_feat.defined()) b.teacher_feat = b.teacher_feat.pin_memory();
      if (b.distill_feat.defined()) b.distill_feat = b.distill_feat.pin_memory();
      for (auto& t : b.teacher)
        if (t.defined()) t = t.pin_memory();
    }
    b.prep_seconds = seconds_since(t0);
    return b;
  }

  // Rows of `pool` as uint8 [n, S, S, 3] (--gray: averaged), image i mirrored where flips[i]: one
  // pass over the bytes on data_threads threads, for a GPU step straight into page-locked memory
  // (with --gray the averaged copy is the one the caller pins).
  at::Tensor gather(data::SurrogatePool& pool, const std::vector<int64_t>& rows, const std::vector<bool>& flips) const {
    at::Tensor u8 = at::empty({static_cast<int64_t>(rows.size()), vit_.image_size, vit_.image_size, 3},
                              at::TensorOptions().dtype(at::kByte).pinned_memory(!normalise_ && !cfg_.gray));
    pool.images_into(rows, flips, u8, cfg_.data_threads);
    return cfg_.gray ? gray_u8(u8) : u8;
  }

  // --compose, one episode: its images' cuts (none unless `composed`) and, when composed, their
  // partner rows. --compose-partner other: a second episode of the same shape is drawn, and class
  // c's images take the part past class c's cut from the second episode's class c (image k from its
  // image k); same: each image takes it from another row of its own class, with a cut of its own.
  // Appended in the batch's order (support, then queries, class-major).
  void add_composition(const data::EpisodeSpec& s, const EpisodeRows& ep, bool composed, std::mt19937_64& rng,
                       std::vector<std::array<int, 2>>& cuts, std::vector<int64_t>& partners) const {
    if (!composed) {
      cuts.insert(cuts.end(), s.n_way * (s.k_shot + s.q_query), {0, 0});
      return;
    }
    const int S = vit_.image_size;
    std::uniform_int_distribution<int> axis(1, 2), pos((3 * S + 4) / 8, (5 * S) / 8);
    const auto draw_cut = [&]() -> std::array<int, 2> {
      const int a = axis(rng);  // drawn before the position
      return {a, pos(rng)};
    };
    const bool same = cfg_.compose_partner == "same";
    std::vector<std::vector<int64_t>> other;  // other: the second episode's rows
    std::vector<std::array<int, 2>> cut;      // other: the cut of each class
    if (!same) {
      other = draw_episode(pool_, s, {}, 0.0, rng, cfg_.disjoint_teachers, neighbours_.empty() ? nullptr : &neighbours_)
                  .picked;
      cut.resize(s.n_way);
      for (auto& c : cut) c = draw_cut();
    }
    for (const auto& [from, to] : {std::pair{0, s.k_shot}, std::pair{s.k_shot, s.k_shot + s.q_query}})
      for (int c = 0; c < s.n_way; ++c)
        for (int k = from; k < to; ++k) {
          if (same) {
            // Another row of the class (it holds >= K + Q): one of the other rows.size() - 1,
            // skipping the image's own.
            const std::vector<int64_t>& rows = pool_.classes()[ep.classes[c]].rows;
            int64_t i = std::uniform_int_distribution<int64_t>(0, static_cast<int64_t>(rows.size()) - 2)(rng);
            if (rows[i] == ep.picked[c][k]) i = static_cast<int64_t>(rows.size()) - 1;
            partners.push_back(rows[i]);
            cuts.push_back(draw_cut());
          } else {
            partners.push_back(other[c][k]);
            cuts.push_back(cut[c]);
          }
        }
  }

  // The batch's images, uint8 [B, S, S, 3] flipped, composed (--compose: a cut per image, empty
  // when off, and a partner row per composed image, read flipped as its image) and rolled, and
  // their patch scores (undefined without a mask), flipped and rolled alike.
  std::pair<at::Tensor, at::Tensor> images_and_scores(const std::vector<int64_t>& rows, const std::vector<bool>& flips,
                                                      const std::vector<int>& variants,
                                                      const std::vector<std::pair<int, int>>& shifts,
                                                      const std::vector<std::array<int, 2>>& cuts,
                                                      const std::vector<int64_t>& partners) const {
    at::Tensor u8 = gather(pool_, rows, flips);
    if (!partners.empty()) {  // only the composed images' partners are read
      std::vector<bool> partner_flips;
      for (size_t i = 0; i < cuts.size(); ++i)
        if (cuts[i][0] != 0) partner_flips.push_back(flips[i]);
      compose_images(u8, gather(pool_, partners, partner_flips), cuts);
    }
    at::Tensor scores;
    if (cfg_.random_masks()) {
      scores = random_mask_scores(rows, variants, grid_ * grid_, cfg_.seed);
    } else if (cfg_.mask_ratio > 0) {
      scores = pool_.patch_scores().index_select(0, at::tensor(rows, at::kLong));
    }
    if (scores.defined()) {
      std::vector<int64_t> fl;
      for (size_t i = 0; i < flips.size(); ++i)
        if (flips[i]) fl.push_back(static_cast<int64_t>(i));
      if (!fl.empty()) {
        const at::Tensor fi = at::tensor(fl, at::kLong);
        scores.index_copy_(0, fi, flip_patch_scores(scores.index_select(0, fi), grid_));
      }
    }
    roll_images(shifts, u8, scores);
    return {u8, scores};
  }

  // --distill-pool: per local episode slot, --distill-images rows drawn uniformly (seeded by seed,
  // slot and step: the schedule does not depend on the world size), whole and unflipped, prepared
  // as the episodes' images are (b.distill_pixels or b.distill_u8); their targets b.distill_feat
  // (with a distillation weight).
  void add_distill_images(Batch& b, int64_t step) const {
    const int n = cfg_.distill_images_per_episode();
    std::uniform_int_distribution<int64_t> pick(0, distill_pool_->size() - 1);
    std::vector<int64_t> rows;
    std::vector<float> mask_scores;
    for (int j = rank_; j < episodes_; j += world_) {
      auto rng =
          data::make_rng(cfg_.seed, kDistillStream + static_cast<std::uint64_t>(j), static_cast<std::uint64_t>(step));
      for (int i = 0; i < n; ++i) rows.push_back(pick(rng));
      // after this slot's rows, from the same stream: the rows do not depend on the mask ratio
      if (cfg_.distill_mask_ratio > 0) {
        std::uniform_real_distribution<float> u(0.0f, 1.0f);
        for (int i = 0; i < n * grid_ * grid_; ++i) mask_scores.push_back(u(rng));
      }
    }
    if (!mask_scores.empty())
      b.distill_patch_index =
          top_patches(at::tensor(mask_scores, at::kFloat).view({static_cast<int64_t>(rows.size()), grid_ * grid_}),
                      cfg_.distill_mask_ratio);
    if (distill_feat_.defined()) b.distill_feat = distill_feat_.index_select(0, at::tensor(rows, at::kLong));
    const at::Tensor u8 = gather(*distill_pool_, rows, std::vector<bool>(rows.size(), false));
    if (normalise_)
      b.distill_pixels = model::preprocess_images(u8, vit_, c10::Device(at::kCPU));
    else
      b.distill_u8 = u8.is_pinned() ? u8 : u8.pin_memory();
  }

  // Random roll of each image (the jitter the surrogates were inverted under); the patch scores
  // roll by the nearest whole number of patches.
  void roll_images(const std::vector<std::pair<int, int>>& shifts, at::Tensor& u8, at::Tensor& scores) const {
    for (size_t i = 0; i < shifts.size(); ++i) {
      const auto [dy, dx] = shifts[i];
      if (dy == 0 && dx == 0) continue;
      u8[i].copy_(at::roll(u8[i], {dy, dx}, {0, 1}));
      if (scores.defined()) {
        const int64_t p = vit_.patch_size;
        const int64_t gy = (dy >= 0 ? dy + p / 2 : dy - p / 2) / p, gx = (dx >= 0 ? dx + p / 2 : dx - p / 2) / p;
        scores[i].copy_(at::roll(scores[i].view({grid_, grid_}), {gy, gx}, {0, 1}).reshape({-1}));
      }
    }
  }

 private:
  const MetaTrainConfig& cfg_;
  data::SurrogatePool& pool_;
  model::ClipVisionConfig vit_;
  int episodes_, rank_, world_, grid_ = 0;
  bool normalise_ = true;
  std::vector<int> single_files_;
  at::Tensor teacher_feat_;
  std::vector<std::vector<int>> neighbours_;
  data::SurrogatePool* distill_pool_ = nullptr;
  at::Tensor distill_feat_;  // [distill pool rows, D]
};

// Runs a BatchMaker on its own thread, `depth` steps ahead.
class Prefetcher {
 public:
  Prefetcher(BatchMaker& maker, int64_t first, int64_t end, bool threaded)
      : maker_(maker), next_(first), end_(end), threaded_(threaded) {
    if (threaded_) thread_ = std::thread([this] { loop(); });
  }
  ~Prefetcher() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      quit_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }
  Batch get(int64_t step) {
    if (!threaded_) return maker_.make(step);
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [&] { return !queue_.empty() || error_; });
    if (error_) std::rethrow_exception(error_);
    Batch b = std::move(queue_.front());
    queue_.pop_front();
    cv_.notify_all();
    if (b.step != step) throw RuntimeError("metatrain: prefetch out of order");
    return b;
  }

 private:
  void loop() {
    try {
      for (;;) {
        {
          std::unique_lock<std::mutex> lk(mu_);
          cv_.wait(lk, [&] { return quit_ || queue_.size() < 2; });
          if (quit_ || next_ >= end_) return;
        }
        Batch b = maker_.make(next_);
        std::lock_guard<std::mutex> lk(mu_);
        queue_.push_back(std::move(b));
        ++next_;
        cv_.notify_all();
      }
    } catch (...) {
      std::lock_guard<std::mutex> lk(mu_);
      error_ = std::current_exception();
      cv_.notify_all();
    }
  }
  BatchMaker& maker_;
  int64_t next_, end_;
  bool threaded_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Batch> queue_;
  bool quit_ = false;
  std::exception_ptr error_;
};

// The feature of each of `rows` (pool rows) under `lora` (nullptr: the bare VFM), whole and
// unflipped (gray: its channels averaged, as --gray feeds the student), [rows.size(), D] float on the
// CPU (chunks of 64 rows dealt out over the ranks, one all-reduce: every rank holds the same table).
at::Tensor rows_features(const model::ClipVision& vit, data::SurrogatePool& pool, dist::Communicator& comm,
                         const c10::Device& device, const model::Lora* lora, bool gray,
                         const std::vector<int64_t>& rows) {
  at::NoGradGuard ng;
  const int64_t n = static_cast<int64_t>(rows.size());
  at::Tensor out = at::zeros({n, vit.config().projection_dim}, at::kFloat);
  for (int64_t first = 0, chunk = 0; first < n; first += 64, ++chunk) {
    if (static_cast<int>(chunk % comm.size()) != comm.rank()) continue;
    const std::vector<int64_t> part(rows.begin() + first, rows.begin() + std::min<int64_t>(first + 64, n));
    const at::Tensor u8 = pool.images(part);
    const at::Tensor px = model::preprocess_images(gray ? gray_u8(u8) : u8, vit.config(), device);
    out.narrow(0, first, static_cast<int64_t>(part.size()))
        .copy_(vit.forward(px, {}, lora).feature.to(at::kCPU, at::kFloat));
  }
  at::Tensor d = out.to(device);
  comm.all_reduce_sum(d);
  return d.cpu();
}

// rows_features of every pool image, computed once per distinct image (distinct_rows) and copied to
// its repeats: [pool rows, D].
at::Tensor pool_features(const model::ClipVision& vit, data::SurrogatePool& pool, dist::Communicator& comm,
                         const c10::Device& device, const model::Lora* lora, bool gray) {
  const DistinctRows d = distinct_rows(pool);
  return rows_features(vit, pool, comm, device, lora, gray, d.rows).index_select(0, at::tensor(d.of_row, at::kLong));
}

json fingerprint(const MetaTrainConfig& c, int episodes) {
  json targets = json::array();
  for (auto m : c.lora.target_modules) targets.push_back(model::module_name(m));
  json j = {{"model", c.model},
            {"pool", c.pool},
            {"seed", c.seed},
            {"way", c.spec.n_way},
            {"shot", c.spec.k_shot},
            {"query", c.spec.q_query},
            {"episodes_per_step", episodes},
            {"lr", c.lr},
            {"lr_min", c.lr_min},
            {"cycle", c.cycle},
            {"warmup", c.warmup},
            {"r", c.lora.r},
            {"alpha", c.lora.alpha},
            {"targets", targets},
            {"layers", c.lora.layers},
            {"mask_ratio", c.mask_ratio},
            {"flip", c.flip},
            {"jitter", c.jitter},
            {"gray", c.gray},
            {"single_lora_prob", c.single_lora_prob},
            {"kl_weight", c.kl_weight},
            {"temperature", c.temperature},
            {"distill_weight", c.distill_weight},
            {"clip_norm", c.clip_norm},
            {"bf16", c.precision == model::Precision::kBf16}};  // the key earlier checkpoints carry
  if (c.cycle == 0) j["steps"] = c.steps;
  if (c.init != "fresh") j["init"] = c.init;  // absent for fresh: checkpoints of earlier versions still resume
  if (c.init_from_dir())                      // a start adapter: its files, not only its path
    j["init_digest"] = prov::file_digest(stdfs::path(c.init) / model::kPeftWeights) + "+" +
                       prov::file_digest(stdfs::path(c.init) / model::kPeftConfig);
  if (c.distill_dense) j["distill_dense"] = true;              // absent when off: earlier checkpoints still resume
  if (c.scales_only) j["scales_only"] = true;                  // the same
  if (c.init_partial) j["init_partial"] = true;                // the same
  if (c.align_weight > 0) j["align_weight"] = c.align_weight;  // the same
  if (c.disjoint_teachers) j["disjoint_teachers"] = true;      // the same
  if (c.hard_classes > 0) j["hard_classes"] = c.hard_classes;  // the same
  if (c.affine > 0) j["affine"] = c.affine;                    // the same
  if (c.compose > 0) j["compose"] = c.compose;                 // the same
  if (c.compose_partner != "other") j["compose_partner"] = c.compose_partner;  // the same
  if (!c.distill_pool.empty()) {                                               // the same
    j["distill_pool"] = c.distill_pool;
    j["distill_images"] = c.distill_images;
    if (c.distill_mask_ratio > 0) j["distill_mask_ratio"] = c.distill_mask_ratio;      // absent when off
    if (c.distill_pool_weight >= 0) j["distill_pool_weight"] = c.distill_pool_weight;  // the same
    if (c.distill_targets != "own") j["distill_targets"] = c.distill_targets;          // the same
    if (c.distill_zoo_softmax > 0) j["distill_zoo_softmax"] = c.distill_zoo_softmax;   // absent when off
  }
  if (c.mask_ratio > 0 && c.mask_select != "top") {
    j["mask_select"] = c.mask_select;
    j["mask_variants"] = c.mask_variants;
  }
  return j;
}

// Every pool file names the LoRA it was inverted from (attribute lora_path), and that directory
// exists; else InputError naming the option that needs it.
void check_lora_paths(const data::SurrogatePool& pool, const std::string& option) {
  for (const auto& f : pool.files()) {
    if (f.lora_path.empty())
      throw InputError(f.path + ": no lora_path attribute; " + option +
                       " needs the LoRA each pool file was inverted from");
    if (!stdfs::is_directory(f.lora_path))
      throw InputError(f.path + ": its LoRA '" + f.lora_path + "' (attribute lora_path) is not a directory; " + option +
                       " needs it (relative paths resolve against the working directory)");
  }
}

// InputError unless `src` adapts every module `lora` does: "metatrain: <option>: <src_name> does
// not adapt <module> of layer <l>, which the meta-LoRA does; give the meta-LoRA <src_name>'s
// modules (--targets) and layers (--layers)". With `partial` (--init-partial) it only logs how
// many of the meta-LoRA's modules `src` lacks: those keep the fresh start.
void check_adapts(const model::Lora& src, const model::Lora& lora, const std::string& option,
                  const std::string& src_name, bool partial) {
  int missing = 0;
  for (const auto& [key, ad] : lora.adapters()) {
    if (src.find(key.first, static_cast<model::Module>(key.second))) continue;
    if (!partial)
      throw InputError("metatrain: " + option + ": " + src_name + " does not adapt " +
                       model::module_name(static_cast<model::Module>(key.second)) + " of layer " +
                       std::to_string(key.first) + ", which the meta-LoRA does; give the meta-LoRA " + src_name +
                       "'s modules (--targets) and layers (--layers), or --init-partial");
    ++missing;
  }
  if (partial)
    LOG_INFO("metatrain", option << " --init-partial: " << missing << " of the meta-LoRA's " << lora.adapters().size()
                                 << " adapted modules are not in " << src_name << " and start fresh (B = 0)");
}

// Sets `lora`'s A and B (its layers only, --layers) to the best rank-r approximation of `src`'s
// deltas at `lora`'s alpha; returns the share of src's squared norm kept. Where r exceeds a delta's
// rank, the components beyond it (singular values below 1e-6 of the largest: zero up to rounding)
// keep the fresh A with B = 0, as a fresh LoRA starts: the start is still src's delta, and those
// components train (with A = B = 0, or both at rounding size, neither would get a gradient);
// `fresh` counts them over the adapted modules.
double set_low_rank_start(model::Lora& lora, const model::Lora& src, int64_t& fresh) {
  double kept = 0;
  fresh = 0;
  const model::Lora init = model::low_rank(src, lora.config().r, lora.config().alpha, &kept);
  at::NoGradGuard ng;
  for (auto& [key, ad] : init.adapters()) {
    model::Adapter* dst = lora.find(key.first, static_cast<model::Module>(key.second));
    if (!dst) continue;
    // low_rank's factors have equal norms per component: |a_j|^2 = s_j / scale
    const at::Tensor norm2 = ad.a.pow(2).sum(1);
    const at::Tensor used = norm2 > norm2.max() * 1e-6;  // [r]
    fresh += used.numel() - used.sum().item<int64_t>();
    dst->a.copy_(at::where(used.unsqueeze(1), ad.a, dst->a));
    dst->b.copy_(ad.b * used.unsqueeze(0).to(ad.b.scalar_type()));
  }
  return kept;
}

// The zoo of a pool: the LoRA directories its files name, each once however many files name it,
// in the order first named (check_lora_paths first, for `option`).
std::vector<std::string> pool_zoo(const data::SurrogatePool& pool, const std::string& option) {
  check_lora_paths(pool, option);
  std::set<std::string> seen;
  std::vector<std::string> zoo;
  for (const auto& f : pool.files())
    if (seen.insert(stdfs::weakly_canonical(f.lora_path).string()).second) zoo.push_back(f.lora_path);
  return zoo;
}

// --init zoo-mean: sets `lora` to the best rank-r approximation of the mean weight delta of the
// pool's LoRAs (pool_zoo). Every rank computes the same adapter.
void init_from_zoo_mean(model::Lora& lora, const data::SurrogatePool& pool, bool partial) {
  const auto& vc = lora.vit_config();
  std::vector<model::Lora> zoo;
  for (const auto& path : pool_zoo(pool, "--init zoo-mean")) zoo.push_back(model::load_peft(path, vc));
  const model::Lora mean = model::average_loras(zoo, vc);
  check_adapts(mean, lora, "--init zoo-mean", "the zoo's mean", partial);
  int64_t fresh = 0;
  const double kept = set_low_rank_start(lora, mean, fresh);
  LOG_INFO("metatrain", "--init zoo-mean: the mean of "
                            << zoo.size() << " zoo LoRAs (rank " << mean.config().r << "), cut to rank "
                            << lora.config().r << ", keeps " << log::fixed(100 * kept, 1) << " % of its squared norm; "
                            << fresh << " components beyond its rank (over all modules) start fresh (B = 0)");
}

// --init DIR: sets `lora` to the best rank-r approximation of the PEFT adapter in DIR (e.g. lora-avg
// or a meta-LoRA written earlier), which must adapt every module the meta-LoRA does.
void init_from_adapter(model::Lora& lora, const std::string& dir, const std::string& model_path, bool partial) {
  const model::Lora start = model::load_peft(dir, lora.vit_config(), model_path);
  check_adapts(start, lora, "--init " + dir, "the adapter", partial);
  int64_t fresh = 0;
  const double kept = set_low_rank_start(lora, start, fresh);
  LOG_INFO("metatrain", "--init " << dir << ": rank " << start.config().r << ", cut to rank " << lora.config().r
                                  << ", keeps " << log::fixed(100 * kept, 1) << " % of its squared norm; " << fresh
                                  << " components beyond its rank start fresh (B = 0)");
}

// Features of every pool image under the LoRA it was inverted from (the pool file's lora_path),
// per mask variant, unflipped and flipped: [rows, V, 2, D] on the CPU (V = --mask-variants under
// --mask-select random, else 1; the flipped slot is left 0 without --flip). With a mask ratio the
// teacher sees the same patches as the student (the top ones by stored score, or variant v's random
// subset, flipped with the image); with 0 (also under --distill-dense) every patch. Every rank checks every path first
// (so all report a missing LoRA alike); the files are then shared out over the ranks and the result summed, so every
// rank holds the whole table.
at::Tensor own_lora_features(const model::ClipVision& vit, data::SurrogatePool& pool, const MetaTrainConfig& cfg,
                             dist::Communicator& comm, const c10::Device& device) {
  const auto t0 = Clock::now();
  at::NoGradGuard ng;
  const int64_t D = vit.config().projection_dim;
  const int64_t grid = vit.config().image_size / vit.config().patch_size;
  check_lora_paths(pool, "--distill-weight");
  const double mask_ratio = cfg.distill_dense ? 0.0 : cfg.mask_ratio;  // --distill-dense: every patch
  const bool random = mask_ratio > 0 && cfg.random_masks();
  const int64_t V = random ? cfg.mask_variants : 1;
  at::Tensor out = at::zeros({pool.size(), V, 2, D}, at::kFloat);
  for (size_t fi = 0; fi < pool.files().size(); ++fi) {
    if (static_cast<int>(fi % comm.size()) != comm.rank()) continue;
    const auto& f = pool.files()[fi];
    model::Lora teacher = model::load_peft(f.lora_path, vit.config());
    teacher.to(device);
    for (int64_t first = f.first_row; first < f.first_row + f.rows; first += 64) {
      const int64_t n = std::min<int64_t>(64, f.first_row + f.rows - first);
      std::vector<int64_t> rows(n);
      std::iota(rows.begin(), rows.end(), first);
      const at::Tensor px = model::preprocess_images(pool.images(rows), vit.config(), device);
      for (int64_t v = 0; v < V; ++v)
        for (int flip = 0; flip < 2; ++flip) {
          if (flip && !cfg.flip) continue;  // never looked up
          model::ForwardOptions fo;
          if (mask_ratio > 0) {
            const at::Tensor sc = random ? random_mask_scores(rows, std::vector<int>(rows.size(), static_cast<int>(v)),
                                                              grid * grid, cfg.seed)
                                         : pool.patch_scores().narrow(0, first, n);
            fo.patch_index = top_patches(flip ? flip_patch_scores(sc, grid) : sc, mask_ratio).to(device);
          }
          const at::Tensor feat = vit.forward(flip ? px.flip({3}) : px, fo, &teacher).feature;
          out.narrow(0, first, n).select(1, v).select(1, flip).copy_(feat.to(at::kCPU, at::kFloat));
        }
    }
  }
  at::Tensor d = out.to(device);
  comm.all_reduce_sum(d);
  LOG_INFO("metatrain", "distillation targets: " << pool.size() << " images under their own LoRAs ("
                                                 << (mask_ratio <= 0 ? std::string("every patch")
                                                     : random        ? std::to_string(V) + " random patch subsets each"
                                                                     : std::string("the kept patches"))
                                                 << "), " << seconds_since(t0) << " s");
  return d.cpu();
}

// --distill-targets zoo, zoo-mean or zoo-concat: the feature of every image of `pool` under each LoRA of its
// zoo (pool_zoo), as pool_features computes it (whole, unflipped, grey under --gray; once per
// distinct image, shared out over the ranks), [rows, L, D] float on the CPU, the same on every rank.
at::Tensor zoo_features(const model::ClipVision& vit, data::SurrogatePool& pool, dist::Communicator& comm,
                        const c10::Device& device, bool gray) {
  const auto t0 = Clock::now();
  const std::vector<std::string> zoo = pool_zoo(pool, "--distill-targets zoo");
  const DistinctRows d = distinct_rows(pool);  // a glyph that several LoRAs retrieved: once
  std::vector<at::Tensor> per_lora;
  for (const auto& path : zoo) {
    model::Lora teacher = model::load_peft(path, vit.config());
    teacher.to(device);
    per_lora.push_back(rows_features(vit, pool, comm, device, &teacher, gray, d.rows));
  }
  LOG_INFO("metatrain", "distillation targets: " << pool.size() << " images (" << d.rows.size()
                                                 << " distinct) of --distill-pool under each of the " << zoo.size()
                                                 << " LoRAs its files name, " << seconds_since(t0) << " s");
  return at::stack(per_lora, 1).index_select(0, at::tensor(d.of_row, at::kLong));
}

// Meta-training as phases: set-up (inputs, directories, models, pool) and resume, the training
// loop of steps, validation, checkpoints, and the report. One instance per run.
class MetaTrainer {
 public:
  MetaTrainer(const MetaTrainConfig& cfg, dist::Communicator& comm, const c10::Device& device)
      : cfg_(cfg), comm_(comm), device_(device), W_(comm.size()), rank_(comm.rank()) {}

  // Set-up: before any work every input and directory is checked; then the models, pool and
  // validation set are loaded, and a checkpoint is resumed from.
  void set_up() {
    cfg_.validate();
    E_ = cfg_.episodes_per_step == 0 ? W_ : cfg_.episodes_per_step;
    if (E_ % W_ != 0)
      throw InputError("metatrain: --episodes-per-step " + std::to_string(E_) +
                       " is not a multiple of the world size " + std::to_string(W_));
    E_local_ = E_ / W_;
    defer_ = cfg_.host_sync == "log" || (cfg_.host_sync == "auto" && device_.is_cuda());
    work_ = cfg_.work.empty() ? cfg_.out + ".work" : cfg_.work;
    ckpt_ = stdfs::path(work_) / kCheckpoint;
    check_inputs();
    claim_work_dir();
    load_models_and_data();
    if (cfg_.resume && stdfs::exists(ckpt_)) resume();
    if (start_ > cfg_.steps)
      throw InputError(ckpt_.string() + ": checkpoint at step " + std::to_string(start_) + " is past --steps " +
                       std::to_string(cfg_.steps));
    open_metrics();
  }

  // The training loop; false when it stopped early with a checkpoint (signal or --stop-after).
  bool train() {
    if (start_ == 0 && have_val_) val0_ = validate(0);
    rss_before_ = peak_rss_mb();
    cuda_peak_mb(device_, /*reset=*/true);  // the training loop's peak, without validation
    BatchMaker maker(cfg_, *pool_, vit_->config(), E_, rank_, W_, /*normalise_here=*/!device_.is_cuda(), teacher_feat_,
                     neighbours_, distill_pool_ ? &*distill_pool_ : nullptr, distill_feat_);
    install_stop_handlers();
    Progress progress("metatrain", "meta-training", cfg_.steps - start_, "steps", 10.0);
    optim::BadStepGuard guard("metatrain", cfg_.max_bad_steps, "; last good checkpoint: " + ckpt_.string(),
                              skipped_total_);
    Prefetcher prefetch(maker, start_, cfg_.steps, cfg_.prefetch);
    util::PhaseClock& phases = util::PhaseClock::this_thread();
    phases.reset();
    std::unique_ptr<util::OpTrace> trace = util::OpTrace::from_env(rank_);  // LORAREC_OP_TRACE: a dev tool
    for (step_ = start_; step_ < cfg_.steps; ++step_) {
      if (trace && step_ - start_ >= kWarmSteps) trace->before_step();
      const auto t_step = Clock::now();
      // The per-phase profile (CPU ops are synchronous): the timed steps only, not validation.
      phases.enable(!device_.is_cuda() && step_ - start_ >= kWarmSteps);
      Batch b = prefetch.get(step_);
      const double wait = seconds_since(t_step);
      phases.add("data", wait);
      const StepResult r = step(b, guard);
      record(r, wait, b.prep_seconds, seconds_since(t_step));
      phases.enable(false);
      progress.advance(1);
      if (!after_step(r.stop)) return false;
    }
    progress.finish();
    return true;
  }

  MetaTrainResult stopped() const {
    MetaTrainResult result;
    result.step = step_;
    return result;
  }

  // The report: the final validation, the kept meta-LoRA, metatrain.json and the adapter (rank 0).
  MetaTrainResult finish() {
    const double gpu_peak = cuda_peak_mb(device_, false);
    const std::uint64_t hash = check_replicas(cfg_.steps);
    const json final_val = validate(cfg_.steps);
    // --keep best: the written meta-LoRA is the best validation's (the last one's when that is best).
    const bool keep_best = cfg_.keep == "best" && !best_val_.is_null();
    const int64_t kept_step = keep_best ? best_val_["step"].get<int64_t>() : cfg_.steps;
    if (keep_best && kept_step != cfg_.steps) {
      at::NoGradGuard ng;
      for (size_t i = 0; i < params_.size(); ++i) params_[i].copy_(best_params_[i]);
    }
    {
      at::NoGradGuard ng;
      fold_scales();  // the written meta-LoRA is a plain one: the scales in B
    }
    json rep = report(hash, final_val, keep_best ? best_val_ : final_val, kept_step, gpu_peak);
    if (rank_ == 0) write(rep, final_val, kept_step);
    comm_.barrier();
    MetaTrainResult result;
    result.step = cfg_.steps;
    result.finished = true;
    result.report = rep.dump();
    return result;
  }

 private:
  // What one step's all-reduce returns, identical on every rank.
  struct StepResult {
    double loss = 0, correct = 0, lr = 0, compute = 0, reduce = 0, imbalance = 0;
    bool stop = false;
  };

  // The digest of a pool's index.json ("none" when absent); InputError when it is not JSON or its
  // pool was inverted from another VFM than --model.
  std::string checked_pool_digest(const stdfs::path& index_path, const std::string& what,
                                  const std::string& model_digest) const {
    if (!stdfs::exists(index_path)) return "none";
    json index;
    try {
      index = json::parse(fs::read_text(index_path));
    } catch (const json::exception& e) {
      throw InputError(index_path.string() + ": invalid JSON (" + e.what() + ")");
    }
    const json had = index.value("settings", json::object()).value("--model (content digest)", json());
    if (had.is_string() && had.get<std::string>() != model_digest)
      throw InputError(what + " was inverted from another VFM (" + index.value("model", std::string("?")) +
                       ", digest " + had.get<std::string>() + ") than --model " + cfg_.model + " (digest " +
                       model_digest + "); meta-train on the VFM the zoo was tuned on");
    return prov::file_digest(index_path);
  }

  // Before any work, on every rank: --out and its work directory are new, empty or this
  // command's; the pool (and --distill-pool) was inverted from --model; the fingerprint of the run.
  void check_inputs() {
    (void)prov::check_output_dir(cfg_.out, "metatrain");
    (void)prov::check_output_dir(work_, "metatrain-work");
    if (!stdfs::exists(cfg_.model)) throw InputError("--model " + cfg_.model + ": no such directory");
    const stdfs::path index_path = stdfs::path(cfg_.pool) / data::kPoolIndexFile;
    const std::string model_digest = io::checked_model_digest(cfg_.model);
    const std::string pool_digest = checked_pool_digest(index_path, "--pool " + cfg_.pool, model_digest);
    fp_ = fingerprint(cfg_, E_);
    fp_["model (content digest)"] = model_digest;
    fp_["pool (index digest)"] = pool_digest;
    if (!cfg_.distill_pool.empty()) {
      const stdfs::path distill_index = stdfs::path(cfg_.distill_pool) / data::kPoolIndexFile;
      if (!stdfs::exists(distill_index))
        throw InputError("--distill-pool " + cfg_.distill_pool + ": no " + data::kPoolIndexFile +
                         " (a pool directory written by invert, e.g. with --retrieve)");
      fp_["distill pool (index digest)"] =
          checked_pool_digest(distill_index, "--distill-pool " + cfg_.distill_pool, model_digest);
    }
    if (stdfs::exists(ckpt_) && !cfg_.resume && !cfg_.restart)
      throw InputError(ckpt_.string() +
                       ": a checkpoint exists; pass --resume to continue it or --restart to discard it");
  }

  void claim_work_dir() {
    comm_.barrier();
    if (rank_ == 0) {
      // The marker names the configuration of the run that owns the directory; a --resume that
      // the checkpoint check refuses must not change it.
      if (cfg_.restart || !stdfs::exists(stdfs::path(work_) / prov::kMarker))
        prov::claim_output_dir(work_, "metatrain-work", fp_);
      if (cfg_.restart) {
        stdfs::remove(ckpt_);
        stdfs::remove(stdfs::path(work_) / "metrics.jsonl");
      }
    }
    comm_.barrier();
  }

  // --distill-pool: the pool and, with a distillation weight, its images' features under their own
  // LoRAs (whole images, unflipped: they are fed so). The alignment alone needs no targets.
  void load_distill_pool() {
    distill_pool_.emplace(data::SurrogatePool::open(cfg_.distill_pool, vit_->config().image_size, P_,
                                                    cfg_.cache_mb * (int64_t(1) << 20)));
    const bool distil = cfg_.public_distill_weight() > 0;
    if (distil && cfg_.distill_targets == "own") {
      MetaTrainConfig dense = cfg_;
      dense.mask_ratio = 0;
      dense.distill_dense = false;
      dense.flip = false;
      // [rows, 1 variant, 2 flips, D]: the one variant, unflipped
      distill_feat_ =
          own_lora_features(*vit_, *distill_pool_, dense, comm_, device_).select(1, 0).select(1, 0).contiguous();
    }
    if (distil &&
        (cfg_.distill_targets == "zoo" || cfg_.distill_targets == "zoo-mean" || cfg_.distill_targets == "zoo-concat")) {
      distill_feat_ = zoo_features(*vit_, *distill_pool_, comm_, device_, cfg_.gray);  // [rows, L, D]
      if (cfg_.distill_targets == "zoo-mean") distill_feat_ = distill_feat_.mean(1);
      if (cfg_.distill_targets == "zoo-concat") {
        const auto t0 = Clock::now();
        distill_feat_ = zoo_concat_features(distill_feat_);
        LOG_INFO("metatrain", "the zoo's features concatenated, cut to " << distill_feat_.size(1)
                                                                         << " components and turned onto their mean, "
                                                                         << seconds_since(t0) << " s");
      }
    }
    const std::string& targets = cfg_.distill_targets;
    const std::string term =
        !distil                   ? ""
        : targets == "own"        ? "the distillation term"
        : targets == "start"      ? "the distillation term towards the start"
        : targets == "zoo-mean"   ? "the distillation term towards the mean of the zoo's features"
        : targets == "zoo-concat" ? "the distillation term towards the zoo's features concatenated (cut and turned)"
        : cfg_.distill_zoo_softmax > 0
            ? "the term towards the zoo's neighbours (softmax R " + log::fixed(cfg_.distill_zoo_softmax, 2) + ")"
            : "the term towards the zoo's pairwise distances";
    LOG_INFO("metatrain", "--distill-pool " << cfg_.distill_pool << ": " << term
                                            << (distil && cfg_.align_weight > 0 ? " and " : "")
                                            << (cfg_.align_weight > 0 ? "the alignment term" : "") << " on "
                                            << cfg_.distill_images_per_episode() << " of its " << distill_pool_->size()
                                            << " images per episode ("
                                            << (cfg_.distill_mask_ratio > 0
                                                    ? "a random " + log::fixed(1 - cfg_.distill_mask_ratio, 2) +
                                                          " of their patches each step; whole-image targets"
                                                    : std::string("whole images"))
                                            << ")");
  }

  void load_models_and_data() {
    vit_.emplace(model::ClipVision::load(cfg_.model));
    const auto& vc = vit_->config();
    P_ = (vc.image_size / vc.patch_size) * (vc.image_size / vc.patch_size);
    cfg_.lora.validate(vc, "metatrain");
    pool_.emplace(data::SurrogatePool::open(cfg_.pool, vc.image_size, P_, cfg_.cache_mb * (int64_t(1) << 20)));
    log_pool();
    have_val_ = !cfg_.val.empty();
    if (have_val_) {
      val_ = data::ImageSet::load(cfg_.val);
      model::check_image_shape(val_.images().sizes(), vc, cfg_.val);
      // Refuses a set too small for the episodes, before any work.
      data::EpisodeSampler check(val_, cfg_.val_spec, "--val-way, --val-shot or --val-query, or --val");
      (void)check;
    }
    vit_->to(device_);
    vit_->set_precision(cfg_.precision);
    if (cfg_.episode_distill_weight() > 0) teacher_feat_ = own_lora_features(*vit_, *pool_, cfg_, comm_, device_);
    if (!cfg_.distill_pool.empty()) load_distill_pool();
    if (cfg_.hard_classes > 0) {
      neighbours_ =
          nearest_classes(*pool_, pool_features(*vit_, *pool_, comm_, device_, nullptr, false), cfg_.hard_classes);
      LOG_INFO("metatrain", "--hard-classes " << cfg_.hard_classes << ": each episode's other classes among the "
                                              << cfg_.hard_classes << " nearest of its first (bare VFM prototypes)");
    }
    lora_.emplace(vc, cfg_.lora, cfg_.seed + 1);
    const bool resuming = cfg_.resume && stdfs::exists(ckpt_);
    // validate() refuses start targets without --distill-pool's term on.
    const bool start_targets = distill_pool_ && cfg_.distill_targets == "start";
    // The start (what --init sets). A checkpoint holds the weights, which resume() copies in later, so
    // a resumed run builds the start only where it needs it: under --scales-only (only the scales are
    // checkpointed; A and B are the start's) and for --distill-targets start (the start's features).
    if (!resuming || cfg_.scales_only || start_targets) {
      if (cfg_.init == "zoo-mean") init_from_zoo_mean(*lora_, *pool_, cfg_.init_partial);
      if (cfg_.init_from_dir()) init_from_adapter(*lora_, cfg_.init, cfg_.model, cfg_.init_partial);
    }
    lora_->to(device_);
    if (start_targets) distill_feat_ = start_features();  // lora_ is the start until resume()'s copy
    if (cfg_.scales_only) {
      lora_->set_requires_grad(false, false);
      for (const auto& entry : lora_->adapters()) {
        model::Adapter* ad = lora_->find(entry.first.first, static_cast<model::Module>(entry.first.second));
        const at::Tensor b0 = ad->b.detach().clone();
        scaled_.push_back({ad, b0, at::ones({b0.size(1)}, b0.options()).requires_grad_(true)});
        params_.push_back(scaled_.back().s);
      }
    } else {
      lora_->set_requires_grad(true, false);
      params_ = lora_->parameters(false);
    }
    for (const auto& p : params_) n_grad_ += p.numel();
    optim::AdamWConfig oc;
    oc.flat = true;  // the update as a few ops on one buffer, not ~7 per LoRA matrix
    opt_.emplace(params_, oc);
    query_labels_ = data::episode_labels(cfg_.spec.n_way, cfg_.spec.q_query).to(device_);
  }

  // --distill-targets start: --distill-pool's images' features (whole, unflipped) under the
  // meta-LoRA as it starts (fresh: B = 0, the bare VFM; else what --init set), before a resumed run
  // copies its checkpoint's weights in.
  at::Tensor start_features() {
    const auto t0 = Clock::now();
    at::Tensor f = pool_features(*vit_, *distill_pool_, comm_, device_, &*lora_, cfg_.gray);
    LOG_INFO("metatrain", "distillation targets: " << distill_pool_->size() << " images of --distill-pool under the "
                                                   << "meta-LoRA's start (" << cfg_.init << "), " << seconds_since(t0)
                                                   << " s");
    return f;
  }

  void log_pool() const {
    const data::SurrogatePool& pool = *pool_;
    LOG_INFO("metatrain", cfg_.pool << ": " << pool.files().size() << " LoRAs, " << pool.classes().size()
                                    << " classes, " << pool.size() << " images ("
                                    << (pool.cached() ? "held in memory, " : "read on demand, over the cache budget, ")
                                    << pool.image_bytes() / (1 << 20) << " MiB)");
    check_pool_for_episodes(cfg_, pool, rank_);
    size_t lo = SIZE_MAX, hi = 0;
    int lo_l = INT32_MAX, hi_l = 0;
    for (const auto& c : pool.classes()) {
      lo = std::min(lo, c.rows.size()), hi = std::max(hi, c.rows.size());
      lo_l = std::min(lo_l, c.loras), hi_l = std::max(hi_l, c.loras);
    }
    const size_t kq = static_cast<size_t>(cfg_.spec.k_shot + cfg_.spec.q_query);
    LOG_INFO("metatrain",
             "real classes: " << lo << " to " << hi << " images each, from " << lo_l << " to " << hi_l << " LoRAs");
    if (lo < 2 * kq)
      LOG_WARN("metatrain", "a class has " << lo << " images, fewer than 2(K+Q) = " << 2 * kq
                                           << ": episodes see nearly every image of it each time (invert a larger "
                                              "--per-class, or let more LoRAs cover each class: zoo --classes)");
  }

  // The meta-LoRA, Adam's state, the step, the counters and the best validation's meta-LoRA.
  void resume() {
    const io::SafetensorsFile f = io::SafetensorsFile::open(ckpt_.string());
    const auto& meta = f.metadata();
    json want = fp_;  // checkpoints written before the digests were recorded compare without them
    json had_fp = meta.count("fingerprint") ? json::parse(meta.at("fingerprint")) : json();
    for (const char* key : {"model (content digest)", "pool (index digest)"})
      if (had_fp.is_object() && !had_fp.contains(key)) want.erase(key);
    if (!had_fp.is_object() || had_fp != want)
      throw InputError(ckpt_.string() + ": checkpoint of another configuration (" +
                       (meta.count("fingerprint") ? meta.at("fingerprint") : std::string("none")) +
                       "); use --restart to discard it");
    std::map<std::string, at::Tensor> t;
    for (const auto& [name, _] : f.tensors()) t[name] = f.tensor(name);
    // The checkpoint's tensor PREFIX.i, shaped as parameter i.
    auto param_like = [&](const std::string& prefix, size_t i) -> const at::Tensor& {
      const std::string key = prefix + "." + std::to_string(i);
      if (!t.count(key) || !t[key].sizes().equals(params_[i].sizes()))
        throw InputError(ckpt_.string() + ": missing or mis-shaped " + key);
      return t[key];
    };
    {
      at::NoGradGuard ng;
      for (size_t i = 0; i < params_.size(); ++i) params_[i].copy_(param_like("lora", i));
    }
    opt_->load_state(t);
    if (!meta.count("step")) throw InputError(ckpt_.string() + ": no step in the metadata");
    start_ = std::stoll(meta.at("step"));  // Adam's own count lags it by the skipped steps
    if (meta.count("skipped")) skipped_total_ = std::stoll(meta.at("skipped"));
    if (meta.count("val0")) val0_ = json::parse(meta.at("val0"));
    if (meta.count("best_val")) best_val_ = json::parse(meta.at("best_val"));
    if (!best_val_.is_null())  // the best validation's meta-LoRA
      for (size_t i = 0; i < params_.size(); ++i) best_params_.push_back(param_like("best", i).clone());
    LOG_INFO("metatrain", "resumed from " << ckpt_.string() << " at step " << start_);
    // Elastic: episode slot j of step s is drawn from (seed, j, s) whatever the world size, so a
    // checkpoint of W ranks continues the same schedule on W' ranks (E stays a multiple of W').
    if (meta.count("world_size") && std::stoi(meta.at("world_size")) != W_)
      LOG_INFO("metatrain", "checkpointed at world size " << meta.at("world_size") << ", resumed at " << W_
                                                          << ": the same episodes per step (" << E_ << "), now "
                                                          << E_local_ << " per rank");
  }

  // Metrics: drop lines past the checkpoint (from a run that died after it).
  void open_metrics() {
    metrics_path_ = stdfs::path(work_) / "metrics.jsonl";
    if (rank_ != 0) return;
    std::string kept;
    if (stdfs::exists(metrics_path_)) {
      std::istringstream in(fs::read_text(metrics_path_));
      for (std::string line; std::getline(in, line);) {
        try {
          if (!line.empty() && json::parse(line).value("step", int64_t(0)) <= start_) kept += line + "\n";
        } catch (const json::exception&) {
        }
      }
    }
    fs::write_text(metrics_path_, kept);
    metrics_.open(metrics_path_, std::ios::app);
  }

  void emit(const json& line) {
    if (rank_ != 0) return;
    metrics_ << line.dump() << "\n" << std::flush;
    if (!metrics_) fs::throw_write_error(metrics_path_);  // disk full: say so rather than lose lines
  }

  // Collective. Validation episodes of real images; keeps the best validation's meta-LoRA.
  json validate(int64_t step) {
    if (!have_val_) return nullptr;
    const auto t0 = Clock::now();
    {
      at::NoGradGuard ng;
      fold_scales();
    }
    const at::Tensor feats = fewshot::embed_all(*vit_, &*lora_, val_, comm_);
    const fewshot::Accuracy a =
        fewshot::evaluate_prototypes(feats, val_, cfg_.val_spec, cfg_.val_episodes, cfg_.seed + kValSeedOffset, comm_);
    json j = {{"step", step},
              {"val_mean", a.mean},
              {"val_ci95", a.ci95},
              {"val_episodes", a.episodes},
              {"val_seconds", seconds_since(t0)}};
    // Every rank holds the same reduced accuracy and the same weights.
    if (best_val_.is_null() || a.mean > best_val_["val_mean"].get<double>()) {
      best_val_ = j;
      best_params_.clear();
      for (const auto& p : params_)
        best_params_.push_back(p.detach().to(at::kCPU, /*non_blocking=*/false, /*copy=*/true));
    }
    LOG_INFO("metatrain", "validation at step " << step << ": " << log::fixed(a.mean) << " +- " << log::fixed(a.ci95)
                                                << " % (" << cfg_.val_spec.n_way << "-way " << cfg_.val_spec.k_shot
                                                << "-shot, " << a.episodes << " episodes of " << cfg_.val << ")");
    emit(j);
    return j;
  }

  void save_checkpoint(int64_t step) {
    if (rank_ != 0) return;
    std::map<std::string, at::Tensor> t;
    for (size_t i = 0; i < params_.size(); ++i) t["lora." + std::to_string(i)] = params_[i].detach().cpu();
    for (auto& [k, v] : opt_->state()) t[k] = v.cpu();
    for (size_t i = 0; i < best_params_.size(); ++i) t["best." + std::to_string(i)] = best_params_[i];
    io::save_safetensors(ckpt_.string(), t,
                         {{"fingerprint", fp_.dump()},
                          {"step", std::to_string(step)},
                          {"skipped", std::to_string(skipped_total_)},
                          {"val0", val0_.dump()},
                          {"best_val", best_val_.dump()},
                          {"world_size", std::to_string(W_)},
                          {"rng", "episodes are drawn from make_rng(seed, slot, step): the step is the RNG state"}});
  }

  // Collective. Throws when the replicas' weights differ; returns the hash.
  std::uint64_t check_replicas(int64_t step) {
    const std::uint64_t h = dist::hash_tensors(params_);
    const auto all = comm_.all_gather_u64(h);
    for (int r = 1; r < W_; ++r)
      if (all[r] != all[0]) {
        std::ostringstream os;
        os << "metatrain: replicas diverged at step " << step << ": rank 0 hash " << std::hex << all[0] << ", rank "
           << std::dec << r << " hash " << std::hex << all[r];
        throw RuntimeError(os.str());
      }
    return h;
  }

  // The summed loss of this rank's episodes and their correct queries.
  std::pair<at::Tensor, at::Tensor> episode_losses(const Batch& b, const at::Tensor& feat) const {
    const int per_episode = cfg_.spec.n_way * (cfg_.spec.k_shot + cfg_.spec.q_query);
    const int n_support = cfg_.spec.n_way * cfg_.spec.k_shot;
    at::Tensor tfeat;
    if (b.teacher_feat.defined()) tfeat = to_device(b.teacher_feat);
    at::Tensor loss_sum = at::zeros({}, feat.options());
    at::Tensor correct = at::zeros({}, feat.options());
    for (int e = 0; e < E_local_; ++e) {
      const at::Tensor f = feat.narrow(0, int64_t(e) * per_episode, per_episode);
      const at::Tensor logits =
          fewshot::prototype_logits(f.narrow(0, 0, n_support), f.narrow(0, n_support, per_episode - n_support),
                                    cfg_.spec.n_way, cfg_.spec.k_shot) /
          cfg_.temperature;
      at::Tensor loss = at::cross_entropy_loss(logits, query_labels_);
      if (b.teacher[e].defined()) {
        const at::Tensor log_p = at::log_softmax(to_device(b.teacher[e]), -1);
        const at::Tensor kl = (log_p.exp() * (log_p - at::log_softmax(logits, -1))).sum(-1).mean();
        loss = loss + cfg_.kl_weight * kl;
      }
      if (tfeat.defined())  // mean over the episode's images of the squared distance / D
        loss = loss + cfg_.episode_distill_weight() *
                          (f - tfeat.narrow(0, int64_t(e) * per_episode, per_episode)).pow(2).mean();
      loss_sum = loss_sum + loss;
      correct = correct + logits.detach().argmax(-1).eq(query_labels_).sum().to(feat.scalar_type());
    }
    return {loss_sum, correct};
  }

  // A batch's images on the device: the normalised pixels (CPU training) or the uint8 images
  // normalised there.
  at::Tensor device_pixels(const at::Tensor& pixels, const at::Tensor& u8) const {
    return pixels.defined() ? pixels.to(device_) : model::preprocess_images(u8, vit_->config(), device_);
  }

  // --distill-pool: the terms on the batch's images of that pool (a dense forward), per episode as
  // the episodes' own terms, summed over this rank's episodes (so the sum does not depend on how
  // the episodes are shared out): public_distill_weight() x the mean squared difference to their
  // targets (their own LoRA's features, or the start's under --distill-targets start), and align_weight x
  // feature_stats_gap between an episode's features (rows of `feat`) and those of its own share of the pool's images.
  at::Tensor public_loss(const Batch& b, const at::Tensor& feat) const {
    const at::Tensor px = device_pixels(b.distill_pixels, b.distill_u8);
    model::ForwardOptions fo;  // --distill-mask-ratio: the kept patches only
    if (b.distill_patch_index.defined()) fo.patch_index = to_device(b.distill_patch_index);
    const at::Tensor f = vit_->forward(px, fo, &*lora_).feature.to(at::kFloat);
    at::Tensor loss = at::zeros({}, f.options());
    const int64_t n = cfg_.distill_images_per_episode();
    if (cfg_.public_distill_weight() > 0 && cfg_.distill_targets == "zoo") {
      const at::Tensor t = to_device(b.distill_feat);  // [rows, L, D]: each image under every zoo LoRA
      const double r = cfg_.distill_zoo_softmax;
      for (int e = 0; e < E_local_; ++e) {
        const at::Tensor fe = f.narrow(0, e * n, n), te = t.narrow(0, e * n, n);
        loss = loss + (r > 0 ? neighbour_gap(fe, te, r) : distance_gap(fe, te)) * cfg_.public_distill_weight();
      }
    } else if (cfg_.public_distill_weight() > 0) {
      loss = loss + (f - to_device(b.distill_feat)).pow(2).mean() * (cfg_.public_distill_weight() * E_local_);
    }
    if (cfg_.align_weight > 0) {
      const int64_t per_episode = cfg_.spec.n_way * (cfg_.spec.k_shot + cfg_.spec.q_query);
      for (int e = 0; e < E_local_; ++e)
        loss = loss + feature_stats_gap(feat.narrow(0, e * per_episode, per_episode), f.narrow(0, e * n, n)) *
                          cfg_.align_weight;
    }
    return loss;
  }

  // One step: forward and backward on this rank's episodes, one all-reduce of the gradients and
  // counters, and (on every rank alike) the update or, for a non-finite step, none.
  StepResult step(const Batch& b, optim::BadStepGuard& guard) {
    StepResult r;
    const auto t_c = Clock::now();
    model::ForwardOptions fo;
    if (b.patch_index.defined()) fo.patch_index = to_device(b.patch_index);
    fold_scales();  // --scales-only: B = B0 diag(s), in the graph
    at::Tensor feat;
    {
      util::PhaseScope input_phase("input");
      const at::Tensor px = device_pixels(b.pixels, b.u8);
      input_phase.stop();
      feat = vit_->forward(px, fo, &*lora_).feature;
    }
    feat = feat.to(at::kFloat);  // prototypes and losses in float32
    util::PhaseScope loss_phase("loss");
    auto [loss_sum, correct] = episode_losses(b, feat);
    loss_phase.stop();
    if (distill_pool_) loss_sum = loss_sum + public_loss(b, feat);
    util::PhaseScope backward_phase("backward");
    opt_->zero_grad();
    (loss_sum / double(E_local_)).backward();
    backward_phase.stop();
    util::PhaseScope reduce_phase("reduce");
    // One flat buffer: gradients, then loss sum, correct queries and the stop flag.
    std::vector<at::Tensor> parts;
    for (auto& p : params_)
      parts.push_back(p.grad().defined() ? p.grad().reshape({-1}) : at::zeros({p.numel()}, p.options()));
    const double flag = stop_requested() ? 1.0 : 0.0;
    parts.push_back(at::stack({loss_sum.detach(), correct, at::full({}, flag, feat.options())}));
    at::Tensor flat = at::cat(parts);
    r.compute = seconds_since(t_c);
    if (cfg_.sync_timing) {  // separate waiting for the slowest rank from the transfer itself
      const auto t_b = Clock::now();
      comm_.barrier();
      r.imbalance = seconds_since(t_b);
    }
    env::fault_point(rank_, "metatrain");
    const auto t_r = Clock::now();
    comm_.all_reduce_sum(flat);
    r.reduce = seconds_since(t_r);
    reduce_phase.stop();
    util::PhaseScope optimizer_phase("optimizer");
    at::Tensor grads = flat.narrow(0, 0, n_grad_);
    grads.div_(double(W_));
    const int64_t cyc = cfg_.cycle == 0 ? cfg_.steps : cfg_.cycle;
    r.lr = optim::cyclic_warmup_cosine(step_, cyc, std::min(cfg_.warmup, cyc - 1), cfg_.lr_min, cfg_.lr);
    if (defer_) {
      update_on_device(flat, grads, r.lr);
      return r;
    }
    const at::Tensor tail = flat.narrow(0, n_grad_, 3).cpu();
    ++host_reads_;
    r.loss = tail[0].item<double>(), r.correct = tail[1].item<double>();
    r.stop = tail[2].item<double>() > 0;
    const bool finite = std::isfinite(r.loss) && (++host_reads_, grads.isfinite().all().item<bool>());
    // Every rank sees the same reduced values, so all apply or all skip the step.
    if (guard.ok(finite, step_)) apply(grads, r.lr);
    skipped_total_ = guard.skipped();
    return r;
  }

  // --host-sync log: the finite check, clipping and the (skipped or applied) update on the device;
  // the loss, correct queries, stop flag and non-finite counts summed into dev_window_ for the
  // next host read (read_window).
  void update_on_device(const at::Tensor& flat, const at::Tensor& grads, double lr) {
    at::NoGradGuard ng;
    const at::Tensor tail = flat.narrow(0, n_grad_, 3).to(at::kDouble);
    const at::Tensor finite = tail[0].isfinite().logical_and(grads.isfinite().all());
    if (cfg_.clip_norm > 0) (void)optim::clip_grad_norm_on_device(grads, cfg_.clip_norm);
    opt_->step_masked(lr, finite, grads);
    if (!dev_window_.defined()) dev_window_ = at::zeros({5}, tail.options());
    const at::Tensor bad = finite.logical_not().to(at::kDouble);
    // [loss sum, correct queries, stop flag, non-finite steps, non-finite steps in a row]
    dev_window_.narrow(0, 0, 2).add_(tail.narrow(0, 0, 2));
    dev_window_[2].copy_(at::maximum(dev_window_[2], tail[2]));
    dev_window_[3].add_(bad);
    dev_window_[4].copy_((dev_window_[4] + bad) * bad);
  }

  // --host-sync log: one host read of dev_window_ into the metrics window, the skipped count and
  // the stop flag; throws after --max-bad-steps non-finite steps in a row. Returns the stop flag.
  bool read_window() {
    if (!defer_ || !dev_window_.defined()) return false;
    const at::Tensor w = dev_window_.cpu();
    ++host_reads_;
    const double* v = w.data_ptr<double>();
    win_loss_ += v[0], win_correct_ += v[1];
    const int64_t skipped = static_cast<int64_t>(v[3]), in_row = static_cast<int64_t>(v[4]);
    if (skipped > 0)
      LOG_WARN("metatrain", "steps up to " << step_ + 1 << ": " << skipped
                                           << " with a non-finite loss or gradient, skipped (" << in_row
                                           << " in a row at the end)");
    skipped_total_ += skipped;
    if (in_row >= cfg_.max_bad_steps)
      throw RuntimeError("metatrain: " + std::to_string(in_row) +
                         " steps in a row with a non-finite loss or gradient (--max-bad-steps); last good "
                         "checkpoint: " +
                         ckpt_.string());
    dev_window_.narrow(0, 0, 4).zero_();
    return v[2] > 0;
  }

  // A host tensor on the device: without waiting for the host when it is page-locked (GPU steps).
  at::Tensor to_device(const at::Tensor& t) const {
    return t.to(at::TensorOptions().device(device_), /*non_blocking=*/t.is_pinned());
  }

  void apply(const at::Tensor& grads, double lr) {
    if (cfg_.clip_norm > 0) {
      optim::clip_grad_norm(grads, cfg_.clip_norm);  // one host read (the norm)
      ++host_reads_;
    }
    opt_->step(lr, grads);
  }

  // The host waits for the device's queue (one host read); its seconds.
  double wait_for_device() {
    const auto t = Clock::now();
    (void)at::empty({1}, at::TensorOptions().device(device_)).cpu();
    ++host_reads_;
    return seconds_since(t);
  }

  // The step's timings (after the warm-up steps) and the metrics window; a metrics line every
  // --log-every steps.
  void record(const StepResult& r, double wait, double prep, double total) {
    const bool timed = step_ - start_ >= kWarmSteps;
    // The timed steps start with an idle GPU: the warm-up steps' queued work is not theirs.
    if (device_.is_cuda() && step_ - start_ == kWarmSteps - 1) (void)wait_for_device();
    if (timed) {
      t_wait_ += wait, t_prep_ += prep, t_compute_ += r.compute, t_reduce_ += r.reduce;
      t_imbalance_ += r.imbalance, t_total_ += total;
      ++timed_steps_;
    }
    win_loss_ += r.loss;
    win_correct_ += r.correct;
    win_queries_ += double(E_) * cfg_.spec.n_way * cfg_.spec.q_query;
    win_time_ += total;
    ++win_steps_;
    if ((step_ + 1) % cfg_.log_every == 0 || step_ + 1 == cfg_.steps) {
      // Under --host-sync log this read waits for the device's queue: a GPU's time goes here, so
      // the timed steps count it (else episodes/s would be the rate of enqueueing the work).
      const auto t_read = Clock::now();
      deferred_stop_ = read_window() || deferred_stop_;
      const double read = seconds_since(t_read);
      if (timed) t_total_ += read;
      win_time_ += read;
      const json line = {{"step", step_ + 1},
                         {"loss", win_loss_ / (double(win_steps_) * E_)},
                         {"train_acc", 100.0 * win_correct_ / win_queries_},
                         {"lr", r.lr},
                         {"episodes_per_s", double(win_steps_) * E_ / win_time_},
                         {"skipped", skipped_total_}};
      emit(line);
      LOG_DEBUG("metatrain", line.dump());
      win_loss_ = win_correct_ = win_queries_ = win_time_ = 0;
      win_steps_ = 0;
    }
  }

  // After step step_: the replica check, validation and checkpoint when due; false after a stop
  // (signal or --stop-after) with its checkpoint written.
  bool after_step(bool stop_now) {
    const int64_t done = step_ + 1;
    const bool last = done == cfg_.steps;
    const bool hash_due = cfg_.hash_every > 0 && done % cfg_.hash_every == 0;
    const bool val_due = have_val_ && cfg_.val_every > 0 && done % cfg_.val_every == 0 && !last;
    const bool checkpoint_due = done % cfg_.checkpoint_every == 0 || last;
    // Each of these reads from the device: on a GPU a timed step counts the wait for its queue, as
    // record() counts the log reads.
    if (device_.is_cuda() && step_ - start_ >= kWarmSteps && (hash_due || val_due || checkpoint_due))
      t_total_ += wait_for_device();
    if (env::fault_point(rank_, "replica")) {  // test hook: the replica check must catch this
      at::NoGradGuard ng;
      params_[0].add_(1e-3);
    }
    if (hash_due) check_replicas(done);
    if (val_due) (void)validate(done);
    if (checkpoint_due) {
      deferred_stop_ = read_window() || deferred_stop_;  // the skipped count the checkpoint records
      save_checkpoint(done);
    }
    stop_now = stop_now || deferred_stop_;
    const bool stop_after = cfg_.stop_after > 0 && done - start_ >= cfg_.stop_after && !last;
    if ((stop_now || stop_after) && !last) {
      (void)read_window();  // the skipped count the checkpoint records
      save_checkpoint(done);
      comm_.barrier();
      LOG_INFO("metatrain", (stop_now ? "stop signal received" : "--stop-after reached")
                                << ": checkpoint at step " << done << " in " << ckpt_.string()
                                << "; the same command with --resume continues");
      step_ = done;
      return false;
    }
    return true;
  }

  // This rank's step time by phase (ms per timed step; CPU only, null on a GPU): data (waiting for
  // the batch), input (to the device, normalised), the forward's patches / embed / attention / mlp
  // / head, loss (prototypes, logits, losses), backward, reduce (flat buffer and all-reduce),
  // optimizer (finite check, clipping, update), other (the rest of the step).
  json phase_profile() const {
    if (device_.is_cuda() || timed_steps_ == 0) return nullptr;
    json out = json::object();
    double sum = 0;
    for (const auto& [name, s] : util::PhaseClock::this_thread().totals()) {
      out[name] = 1e3 * s / double(timed_steps_);
      sum += s;
    }
    out["other"] = 1e3 * std::max(0.0, t_total_ - sum) / double(timed_steps_);
    return out;
  }

  json report(std::uint64_t hash, const json& final_val, const json& kept_val, int64_t kept_step, double gpu_peak) {
    const double rss_peak = peak_rss_mb();
    const auto share = [&](double x) { return t_total_ > 0 ? x / t_total_ : 0.0; };
    std::ostringstream hex;
    hex << std::hex << hash;
    json report = {
        {"model", cfg_.model},
        {"pool", cfg_.pool},
        {"val", cfg_.val},
        {"steps", cfg_.steps},
        {"world_size", W_},
        {"episodes_per_step", E_},
        {"episode", {{"way", cfg_.spec.n_way}, {"shot", cfg_.spec.k_shot}, {"query", cfg_.spec.q_query}}},
        {"mask_ratio", cfg_.mask_ratio},
        {"precision", model::precision_name(cfg_.precision)},
        {"tokens_per_image", 1 + P_ - static_cast<int64_t>(cfg_.mask_ratio * P_)},
        {"skipped_steps", skipped_total_},
        {"replica_hash", hex.str()},
        {"val_initial", val0_},
        {"val_final", final_val},
        {"val_best", best_val_},
        {"keep", cfg_.keep},
        {"kept_step", kept_step},
        {"val_kept", kept_val},
        {"timing",
         {{"timed_steps", timed_steps_},
          {"episodes_per_s", t_total_ > 0 ? double(timed_steps_) * E_ / t_total_ : 0.0},
          {"step_seconds", timed_steps_ ? t_total_ / timed_steps_ : 0.0},
          {"data_wait_share", share(t_wait_)},
          {"data_prep_share", share(t_prep_)},
          {"prefetch", cfg_.prefetch},
          {"data_threads", cfg_.data_threads},
          {"forward_backward_share", share(t_compute_)},
          {"all_reduce_share", share(t_reduce_)},
          {"sync_timing", cfg_.sync_timing},
          {"host_sync", defer_ ? "log" : "step"},
          {"host_reads", host_reads_},
          {"host_reads_per_step", cfg_.steps > start_ ? double(host_reads_) / double(cfg_.steps - start_) : 0.0},
          {"imbalance_wait_share", share(t_imbalance_)}}},
        {"memory",
         {{"device", device_.str()},
          {"peak_rss_mb", rss_peak},
          {"rss_before_training_mb", rss_before_},
          {"cuda_peak_allocated_mb", gpu_peak},
          {"pool_cached", pool_->cached()},
          {"pool_image_mb", double(pool_->image_bytes()) / (1 << 20)}}},
        {"fingerprint", fp_}};
    report["timing"]["phase_ms_per_step"] = phase_profile();
    // Peak RSS of every rank (rank 0 writes the report).
    report["memory"]["peak_rss_mb_per_rank"] = comm_.all_gather_f64(rss_peak);
    return report;
  }

  // Rank 0: the PEFT adapter with metatrain.json and the output's marker, and the summary line.
  void write(const json& report, const json& final_val, int64_t kept_step) {
    lora_->to(c10::Device(at::kCPU));
    model::save_peft(cfg_.out, *lora_, cfg_.model,
                     {{"metatrain.json", report.dump(2) + "\n"}, {prov::kMarker, prov::marker_text("metatrain", fp_)}});
    auto val_text = [](const json& v) {
      return v.is_null() ? std::string("-") : log::fixed(v["val_mean"].get<double>());
    };
    const std::string kept = cfg_.keep == "best" ? ", kept the best validation's meta-LoRA (step " +
                                                       std::to_string(kept_step) + ", " + val_text(best_val_) + " %)"
                                                 : std::string();
    LOG_INFO("metatrain", "wrote " << cfg_.out << " (PEFT adapter + metatrain.json); "
                                   << (val0_.is_null() && final_val.is_null()
                                           ? std::string("no validation (--val not given)")
                                           : "val " + val_text(val0_) + " -> " + val_text(final_val) + " %" + kept)
                                   << ", "
                                   << (timed_steps_ > 0 ? log::fixed(report["timing"]["episodes_per_s"].get<double>()) +
                                                              " episodes/s"
                                                        : std::string("too few steps to time")));
  }

  const MetaTrainConfig& cfg_;
  dist::Communicator& comm_;
  const c10::Device device_;
  const int W_, rank_;
  int E_ = 0, E_local_ = 0, P_ = 0;
  std::string work_;
  stdfs::path ckpt_, metrics_path_;
  json fp_;
  std::optional<model::ClipVision> vit_;
  std::optional<data::SurrogatePool> pool_;
  data::ImageSet val_;
  bool have_val_ = false;
  at::Tensor teacher_feat_, query_labels_;
  std::optional<data::SurrogatePool> distill_pool_;  // --distill-pool
  at::Tensor distill_feat_;                          // its images' targets [rows, D] (own LoRA or start)
  std::vector<std::vector<int>> neighbours_;         // --hard-classes: nearest_classes of the pool
  std::optional<model::Lora> lora_;
  // --scales-only: each adapter's frozen B0 and its trained scales s (params_); B = B0 diag(s).
  struct Scaled {
    model::Adapter* ad;
    at::Tensor b0, s;
  };
  std::vector<Scaled> scaled_;
  void fold_scales() {
    for (auto& x : scaled_) x.ad->b = x.b0 * x.s;
  }
  std::vector<at::Tensor> params_;
  int64_t n_grad_ = 0;
  std::optional<optim::AdamW> opt_;
  std::ofstream metrics_;
  // Progress: the first step of this run, the next step, skipped steps so far.
  int64_t start_ = 0, step_ = 0, skipped_total_ = 0;
  json val0_ = nullptr;
  // The meta-LoRA of the best validation so far (highest mean, earliest on a tie), kept on the
  // CPU and in the checkpoint whatever --keep says, so that --keep never changes the training.
  json best_val_ = nullptr;
  std::vector<at::Tensor> best_params_;
  double rss_before_ = 0;
  // --host-sync: whether the host reads the step's results only at log and checkpoint steps, the
  // device-side window it then reads, the stop flag it saw, and the host reads of the training loop.
  bool defer_ = false, deferred_stop_ = false;
  at::Tensor dev_window_;
  int64_t host_reads_ = 0;
  // Timings of the timed steps (seconds) and the current metrics window.
  double t_wait_ = 0, t_prep_ = 0, t_compute_ = 0, t_reduce_ = 0, t_imbalance_ = 0, t_total_ = 0;
  int64_t timed_steps_ = 0;
  double win_loss_ = 0, win_correct_ = 0, win_queries_ = 0, win_time_ = 0;
  int64_t win_steps_ = 0;
};

}  // namespace

at::Tensor feature_stats_gap(const at::Tensor& a, const at::Tensor& b) {
  if (a.dim() != 2 || b.dim() != 2 || a.size(1) != b.size(1) || a.size(0) < 2 || b.size(0) < 2)
    throw InputError("feature_stats_gap: needs [n_a, D] and [n_b, D] with n >= 2 rows each");
  const at::Tensor gap = (a.mean(0) - b.mean(0)).pow(2).sum() + (a.std(0) - b.std(0)).pow(2).sum();
  return gap / b.detach().pow(2).sum(1).mean().clamp_min(1e-12);
}

// [..., n, D] -> [..., n, n]: the pairwise squared distances of the rows.
static at::Tensor sq_dist(const at::Tensor& x) {
  const at::Tensor n2 = x.pow(2).sum(-1);
  return (n2.unsqueeze(-1) + n2.unsqueeze(-2) - 2 * at::matmul(x, x.transpose(-1, -2))).clamp_min(0);
}

// t [n, L, D'] (each row under L LoRAs) -> [n, n]: the zoo's pairwise squared distances, their mean
// over the LoRAs, in f's dtype and without gradient.
static at::Tensor zoo_sq_dist(const at::Tensor& t, const at::Tensor& f) {
  return sq_dist(t.detach().to(f.scalar_type()).transpose(0, 1)).mean(0);
}

at::Tensor distance_gap(const at::Tensor& f, const at::Tensor& t) {
  if (f.dim() != 2 || t.dim() != 3 || t.size(0) != f.size(0) || f.size(0) < 2)
    throw InputError("distance_gap: needs f [n, D] and t [n, L, D'] with n >= 2 rows each");
  const int64_t n = f.size(0);
  const at::Tensor off = 1 - at::eye(n, f.options());
  const at::Tensor dt = zoo_sq_dist(t, f);
  const at::Tensor m = (dt * off).sum() / static_cast<double>(n * (n - 1));
  return ((sq_dist(f) - dt) * off).pow(2).sum() / static_cast<double>(n * (n - 1)) / m.pow(2).clamp_min(1e-24);
}

at::Tensor zoo_concat_features(const at::Tensor& t) {
  if (t.dim() != 3 || t.size(0) < 2 || t.size(1) < 1 || t.size(2) < 1)
    throw InputError("zoo_concat_features: needs t [n, L, D] with n >= 2 rows");
  const int64_t n = t.size(0), L = t.size(1), D = t.size(2), k = std::min(D, n - 1);  // centred: rank <= n - 1
  const at::Tensor td = t.detach().to(at::kDouble);
  const at::Tensor c = td.reshape({n, L * D}) / std::sqrt(static_cast<double>(L));
  const at::Tensor cc = c - c.mean(0, true);
  // the principal scores [n, k]: from the smaller of the scatter [LD, LD] and the Gram [n, n]
  // matrices (eigh: ascending eigenvalues, so the last k columns)
  at::Tensor y;
  if (L * D <= n) {
    y = at::matmul(cc, std::get<1>(at::linalg_eigh(at::matmul(cc.t(), cc))).narrow(1, L * D - k, k));
  } else {
    const auto [values, vectors] = at::linalg_eigh(at::matmul(cc, cc.t()));
    y = vectors.narrow(1, n - k, k) * values.narrow(0, n - k, k).clamp_min(0).sqrt();
  }
  if (k < D) y = at::constant_pad_nd(y, {0, D - k});
  // orthogonal Procrustes with one scale onto the mean features (both centred)
  const at::Tensor mean = td.mean(1), centre = mean.mean(0, true);
  const auto [u, sv, vh] = at::linalg_svd(at::matmul(y.t(), mean - centre), false);
  const at::Tensor scale = sv.sum() / y.pow(2).sum().clamp_min(1e-300);
  return (at::matmul(y, at::matmul(u, vh)) * scale + centre).to(t.scalar_type());
}

at::Tensor neighbour_gap(const at::Tensor& f, const at::Tensor& t, double r) {
  if (f.dim() != 2 || t.dim() != 3 || t.size(0) != f.size(0) || f.size(0) < 3 || !(r > 0))
    throw InputError("neighbour_gap: needs f [n, D] and t [n, L, D'] with n >= 3 rows each, and r > 0");
  const int64_t n = f.size(0);
  const at::Tensor diag = at::eye(n, f.options()).to(at::kBool);
  // log softmax over j != i of -d_ij / (r x the mean of d over those pairs)
  auto log_p = [&](const at::Tensor& d) {
    const at::Tensor m = d.masked_fill(diag, 0).sum() / static_cast<double>(n * (n - 1));
    return at::log_softmax((-d / (m.clamp_min(1e-24) * r)).masked_fill(diag, -1e30), 1);
  };
  const at::Tensor lt = log_p(zoo_sq_dist(t, f));
  const at::Tensor ls = log_p(sq_dist(f));
  return (lt.exp() * (lt - ls)).masked_fill(diag, 0).sum() / static_cast<double>(n);
}

int resolve_data_threads(int asked, const c10::Device& device, int cpus) {
  if (asked < 0) throw InputError("metatrain: --data-threads must be >= 0, got " + std::to_string(asked));
  return asked > 0 ? asked : device.is_cuda() ? std::clamp(cpus - 1, 1, 8) : 1;
}

MetaTrainResult run_metatrain(const MetaTrainConfig& cfg, dist::Communicator& comm, const c10::Device& device) {
  MetaTrainer trainer(cfg, comm, device);
  trainer.set_up();
  if (!trainer.train()) return trainer.stopped();
  return trainer.finish();
}

}  // namespace lorarec::train
