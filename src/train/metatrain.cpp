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
#include <deque>
#include <exception>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <numeric>
#include <set>
#include <sstream>
#include <thread>

#ifdef LORAREC_TORCH_HAS_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include "lorarecycle/dist/communicator.h"
#include "lorarecycle/eval/fewshot.h"
#include "lorarecycle/invert/pool.h"
#include "lorarecycle/io/hdf5.h"
#include "lorarecycle/io/peft.h"
#include "lorarecycle/io/safetensors.h"
#include "lorarecycle/train/optim.h"
#include "lorarecycle/util/env.h"
#include "lorarecycle/util/error.h"
#include "lorarecycle/util/fs.h"
#include "lorarecycle/util/log.h"
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

// ---------------------------------------------------------------------------------------------
// Surrogate pool

SurrogatePool::SurrogatePool(SurrogatePool&&) noexcept = default;
SurrogatePool& SurrogatePool::operator=(SurrogatePool&&) noexcept = default;
SurrogatePool::~SurrogatePool() = default;

SurrogatePool SurrogatePool::open(const std::string& dir, int image_size, int num_patches, int64_t cache_bytes) {
  const stdfs::path index_path = stdfs::path(dir) / "index.json";
  if (!stdfs::exists(index_path))
    throw InputError(index_path.string() + ": no pool index (run `lorarecycle invert` first, or check --pool)");
  json index;
  try {
    index = json::parse(fs::read_text(index_path));
  } catch (const json::exception& e) {
    throw InputError(index_path.string() + ": not valid JSON: " + e.what());
  }
  if (!index.contains("files") || !index["files"].is_array() || index["files"].empty())
    throw InputError(index_path.string() + ": no \"files\" list");
  if (!index.contains("format") || !index["format"].is_number() || index["format"].get<int>() < invert::kPoolFormat)
    throw InputError(dir +
                     ": a pool of an older lorarecycle (classes numbered per LoRA, not by real class); re-run "
                     "`lorarecycle invert` with this --out to rebuild it");
  std::map<int64_t, int> class_index;  // dataset class id -> index into classes_
  SurrogatePool pool;
  int64_t row = 0;
  std::vector<at::Tensor> scores, images;
  int64_t total_bytes = 0;
  for (const auto& entry : index["files"]) {
    File f;
    try {
      f.path = (stdfs::path(dir) / entry.at("file").get<std::string>()).string();
      f.lora_id = entry.at("lora_id").get<int>();
    } catch (const json::exception& e) {
      throw InputError(index_path.string() + ": malformed file entry: " + e.what());
    }
    auto h = std::make_unique<io::h5::File>(io::h5::File::open_read(f.path));
    if (!h->has_attr("/", "complete") || h->attr_double("/", "complete") != 1.0)
      throw InputError(f.path + ": incomplete pool file (re-run `lorarecycle invert` to finish it)");
    invert::check_pool_file_intact(f.path);  // a corrupt file is an error, never a wrong result
    const auto ishape = h->shape("/images");
    if (ishape.size() != 4 || ishape[1] != image_size || ishape[2] != image_size || ishape[3] != 3)
      throw InputError(f.path + ": /images must be [n, " + std::to_string(image_size) + ", " +
                       std::to_string(image_size) + ", 3] for this VFM");
    f.rows = ishape[0];
    f.first_row = row;
    if (h->has_attr("/", "lora_path")) f.lora_path = h->attr_string("/", "lora_path");
    if (!h->has_attr("/", "pool_format") || h->attr_double("/", "pool_format") < invert::kPoolFormat)
      throw InputError(f.path +
                       ": a pool file of an older lorarecycle (classes numbered per LoRA); re-run "
                       "`lorarecycle invert` with this --out to rebuild it");
    const at::Tensor labels = h->read("/labels", 0, -1, at::kInt).to(at::kLong);
    const at::Tensor global = h->read("/global_class", 0, -1, at::kInt).to(at::kLong);
    const at::Tensor logits = h->read("/teacher_logits", 0, -1, at::kFloat);
    const at::Tensor sc = h->read("/patch_scores", 0, -1, at::kFloat);
    if (labels.size(0) != f.rows || global.size(0) != f.rows || logits.dim() != 2 || logits.size(0) != f.rows ||
        sc.dim() != 2 || sc.size(0) != f.rows || sc.size(1) != num_patches)
      throw InputError(f.path + ": /labels, /global_class, /teacher_logits or /patch_scores do not match /images (" +
                       std::to_string(num_patches) + " patches expected)");
    f.num_classes = static_cast<int>(logits.size(1));
    f.local_rows.assign(f.num_classes, {});
    f.classes.assign(f.num_classes, -1);
    std::vector<int64_t> local_global(f.num_classes, -1);
    const int64_t* lp = labels.data_ptr<int64_t>();
    const int64_t* gp = global.data_ptr<int64_t>();
    for (int64_t i = 0; i < f.rows; ++i) {
      if (lp[i] < 0 || lp[i] >= f.num_classes) throw InputError(f.path + ": /labels out of range");
      if (gp[i] < 0) throw InputError(f.path + ": /global_class is negative");
      if (local_global[lp[i]] >= 0 && local_global[lp[i]] != gp[i])
        throw InputError(f.path + ": label " + std::to_string(lp[i]) + " maps to two dataset classes in /global_class");
      local_global[lp[i]] = gp[i];
      f.local_rows[lp[i]].push_back(row + i);
    }
    const int file_index = static_cast<int>(pool.files_.size());
    for (int c = 0; c < f.num_classes; ++c) {
      if (local_global[c] < 0) continue;
      auto [it, fresh] = class_index.emplace(local_global[c], static_cast<int>(pool.classes_.size()));
      if (fresh) pool.classes_.push_back(Class{local_global[c], {}, 0});
      Class& k = pool.classes_[it->second];
      for (int64_t r : f.local_rows[c]) k.rows.push_back(r);
      ++k.loras;
      f.classes[c] = it->second;
    }
    pool.row_file_.insert(pool.row_file_.end(), f.rows, file_index);
    pool.logits_.push_back(logits);
    scores.push_back(sc);
    total_bytes += f.rows * image_size * image_size * 3;
    pool.handles_.push_back(std::move(h));
    pool.files_.push_back(std::move(f));
    row += pool.files_.back().rows;
  }
  pool.scores_ = at::cat(scores);
  pool.image_bytes_ = total_bytes;
  if (total_bytes <= cache_bytes) {
    for (size_t i = 0; i < pool.files_.size(); ++i)
      images.push_back(pool.handles_[i]->read("/images", 0, -1, at::kByte));
    pool.images_ = at::cat(images);
    pool.handles_.clear();
  }
  return pool;
}

at::Tensor SurrogatePool::images(const std::vector<int64_t>& rows) {
  if (images_.defined()) return images_.index_select(0, at::tensor(rows, at::kLong));
  std::vector<at::Tensor> out;
  out.reserve(rows.size());
  for (int64_t r : rows) {
    const File& f = files_[row_file_[r]];
    out.push_back(handles_[row_file_[r]]->read("/images", r - f.first_row, 1, at::kByte));
  }
  return at::cat(out);
}

EpisodeRows draw_episode(const SurrogatePool& pool, const data::EpisodeSpec& s, const std::vector<int>& single_files,
                         double single_prob, std::mt19937_64& rng) {
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
  } else {
    for (int64_t k : data::sample_without_replacement(static_cast<int64_t>(pool.classes().size()), s.n_way, rng)) {
      sources.push_back(&pool.classes()[k].rows);
      ep.classes.push_back(static_cast<int>(k));
    }
  }
  ep.picked.resize(s.n_way);
  for (int c = 0; c < s.n_way; ++c) {
    const auto& cr = *sources[c];
    for (int64_t k : data::sample_without_replacement(static_cast<int64_t>(cr.size()), s.k_shot + s.q_query, rng))
      ep.picked[c].push_back(cr[k]);
  }
  return ep;
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

// ---------------------------------------------------------------------------------------------

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
  if (!(single_lora_prob >= 0 && single_lora_prob <= 1))
    throw InputError("metatrain: --single-lora-prob must be in [0, 1]");
  if (!(kl_weight >= 0)) throw InputError("metatrain: --kl-weight must be >= 0");
  if (!(temperature > 0) || !std::isfinite(temperature)) throw InputError("metatrain: --temperature must be > 0");
  if (!(distill_weight >= 0) || !std::isfinite(distill_weight))
    throw InputError("metatrain: --distill-weight must be >= 0");
  if (distill_dense && (distill_weight <= 0 || mask_ratio <= 0))
    throw InputError(
        "metatrain: --distill-dense changes the distillation targets under a mask: it needs --distill-weight > 0 "
        "and --mask-ratio > 0");
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
  if (init != "fresh" && init != "zoo-mean")
    throw InputError("metatrain: --init must be fresh or zoo-mean, not '" + init + "'");
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
  double prep_seconds = 0;
};

// Pool files usable for single-LoRA (KL) episodes: every label of the file has K+Q images.
std::vector<int> single_lora_files(const MetaTrainConfig& cfg, const SurrogatePool& pool) {
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
void check_pool_for_episodes(const MetaTrainConfig& cfg, const SurrogatePool& pool, int rank) {
  const int need = cfg.spec.k_shot + cfg.spec.q_query;
  for (const auto& c : pool.classes())
    if (static_cast<int>(c.rows.size()) < need)
      throw InputError(cfg.pool + ": dataset class " + std::to_string(c.id) + " has " + std::to_string(c.rows.size()) +
                       " images, fewer than K+Q = " + std::to_string(need) +
                       " (invert with a larger --per-class, or lower --shot/--query)");
  if (static_cast<int>(pool.classes().size()) < cfg.spec.n_way)
    throw InputError(cfg.pool + ": " + std::to_string(pool.classes().size()) + " classes, fewer than N = " +
                     std::to_string(cfg.spec.n_way) + " (lower --way, or invert a zoo that covers more classes)");
  if (cfg.single_lora_prob > 0 && single_lora_files(cfg, pool).empty() && rank == 0)
    LOG_WARN("metatrain", cfg.pool << ": no pool file holds K+Q = " << need << " images of each of its classes, so no "
                                   << "single-LoRA (KL) episode is drawn and --single-lora-prob "
                                   << cfg.single_lora_prob << " has no effect (invert with --per-class >= " << need
                                   << ", or lower --shot/--query)");
}

// Draws and prepares batches; deterministic in (seed, slot, step).
class BatchMaker {
 public:
  // normalise_here: produce normalised float pixels (CPU training); else the uint8 images, for the
  // device to normalise (4x less to copy; a GPU does it in microseconds).
  // teacher_feat: [pool rows, 2, D] features of every image under its own LoRA, unflipped and
  // flipped (undefined: no distillation).
  BatchMaker(const MetaTrainConfig& cfg, SurrogatePool& pool, const model::ClipVisionConfig& vit, int episodes,
             int rank, int world, bool normalise_here, at::Tensor teacher_feat)
      : cfg_(cfg),
        pool_(pool),
        vit_(vit),
        episodes_(episodes),
        rank_(rank),
        world_(world),
        normalise_(normalise_here),
        teacher_feat_(std::move(teacher_feat)) {
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
    std::vector<std::pair<int, int>> shifts;  // per image (dy, dx) with --jitter
    for (int j = rank_; j < episodes_; j += world_) {
      auto rng =
          data::make_rng(cfg_.seed, kEpisodeStream + static_cast<std::uint64_t>(j), static_cast<std::uint64_t>(step));
      std::uniform_real_distribution<double> u(0, 1);
      const EpisodeRows ep = draw_episode(pool_, s, single_files_, cfg_.single_lora_prob, rng);
      const auto& picked = ep.picked;
      const bool single = ep.file >= 0;
      const int file = ep.file;
      const auto& cols = ep.cols;
      std::vector<int64_t> query_rows;
      for (int c = 0; c < s.n_way; ++c)
        for (int k = 0; k < s.k_shot; ++k) rows.push_back(picked[c][k]);
      for (int c = 0; c < s.n_way; ++c)
        for (int k = s.k_shot; k < s.k_shot + s.q_query; ++k) {
          rows.push_back(picked[c][k]);
          query_rows.push_back(picked[c][k]);
        }
      for (int i = 0; i < s.n_way * (s.k_shot + s.q_query); ++i) flips.push_back(cfg_.flip && u(rng) < 0.5);
      if (cfg_.jitter > 0) {
        std::uniform_int_distribution<int> d(-cfg_.jitter, cfg_.jitter);
        for (int i = 0; i < s.n_way * (s.k_shot + s.q_query); ++i) {
          const int dy = d(rng), dx = d(rng);
          shifts.emplace_back(dy, dx);
        }
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
      for (size_t i = 0; i < rows.size(); ++i) flat.push_back(rows[i] * 2 + (flips[i] ? 1 : 0));
      b.teacher_feat = teacher_feat_.view({-1, teacher_feat_.size(-1)}).index_select(0, at::tensor(flat, at::kLong));
    }
    at::Tensor u8 = pool_.images(rows);  // [B, S, S, 3]
    if (cfg_.gray) u8 = u8.to(at::kFloat).mean(-1, true).round().to(at::kByte).expand({-1, -1, -1, 3}).contiguous();
    std::vector<int64_t> fl;
    for (size_t i = 0; i < flips.size(); ++i)
      if (flips[i]) fl.push_back(static_cast<int64_t>(i));
    at::Tensor scores;
    if (cfg_.mask_ratio > 0) scores = pool_.patch_scores().index_select(0, at::tensor(rows, at::kLong));
    if (!fl.empty()) {
      const at::Tensor fi = at::tensor(fl, at::kLong);
      u8.index_copy_(0, fi, u8.index_select(0, fi).flip({2}));
      if (scores.defined()) scores.index_copy_(0, fi, flip_patch_scores(scores.index_select(0, fi), grid_));
    }
    // Random roll of each image (the jitter the surrogates were inverted under); the patch scores
    // roll by the nearest whole number of patches.
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
    if (normalise_)
      b.pixels = model::preprocess_images(u8, vit_, c10::Device(at::kCPU));
    else
      b.u8 = u8;
    if (scores.defined()) b.patch_index = top_patches(scores, cfg_.mask_ratio);
    b.prep_seconds = seconds_since(t0);
    return b;
  }

 private:
  const MetaTrainConfig& cfg_;
  SurrogatePool& pool_;
  model::ClipVisionConfig vit_;
  int episodes_, rank_, world_, grid_ = 0;
  bool normalise_ = true;
  std::vector<int> single_files_;
  at::Tensor teacher_feat_;
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
  if (c.init != "fresh") j["init"] = c.init;       // absent for fresh: checkpoints of earlier versions still resume
  if (c.distill_dense) j["distill_dense"] = true;  // absent when off: earlier checkpoints still resume
  return j;
}

// Every pool file names the LoRA it was inverted from (attribute lora_path), and that directory
// exists; else InputError naming the option that needs it.
void check_lora_paths(const SurrogatePool& pool, const std::string& option) {
  for (const auto& f : pool.files()) {
    if (f.lora_path.empty())
      throw InputError(f.path + ": no lora_path attribute; " + option +
                       " needs the LoRA each pool file was inverted from");
    if (!stdfs::is_directory(f.lora_path))
      throw InputError(f.path + ": its LoRA '" + f.lora_path + "' (attribute lora_path) is not a directory; " + option +
                       " needs it (relative paths resolve against the working directory)");
  }
}

// --init zoo-mean: sets `lora` to the best rank-r approximation of the mean weight delta of the
// pool's LoRAs (each LoRA once, however many files name it). Every rank computes the same adapter.
void init_from_zoo_mean(model::Lora& lora, const SurrogatePool& pool) {
  check_lora_paths(pool, "--init zoo-mean");
  const auto& vc = lora.vit_config();
  std::set<std::string> seen;
  std::vector<model::Lora> zoo;
  for (const auto& f : pool.files())
    if (seen.insert(stdfs::weakly_canonical(f.lora_path).string()).second)
      zoo.push_back(io::load_peft(f.lora_path, vc));
  const model::Lora mean = model::average_loras(zoo, vc);
  const auto same_key = [](const auto& x, const auto& y) { return x.first == y.first; };
  if (!std::equal(lora.adapters().begin(), lora.adapters().end(), mean.adapters().begin(), mean.adapters().end(),
                  same_key))
    throw InputError("metatrain: --init zoo-mean: the zoo's LoRAs adapt other modules or layers than the meta-LoRA (" +
                     std::to_string(mean.adapters().size()) + " against " + std::to_string(lora.adapters().size()) +
                     " adapters); give the meta-LoRA the zoo's --targets");
  double kept = 0;
  const model::Lora init = model::low_rank(mean, lora.config().r, lora.config().alpha, &kept);
  at::NoGradGuard ng;
  for (auto& [key, ad] : init.adapters()) {
    model::Adapter* dst = lora.find(key.first, static_cast<model::Module>(key.second));
    dst->a.copy_(ad.a);
    dst->b.copy_(ad.b);
  }
  LOG_INFO("metatrain", "--init zoo-mean: the mean of " << zoo.size() << " zoo LoRAs (rank " << mean.config().r
                                                        << "), cut to rank " << lora.config().r << ", keeps "
                                                        << log::fixed(100 * kept, 1) << " % of its squared norm");
}

// Features of every pool image under the LoRA it was inverted from (the pool file's lora_path),
// unflipped and flipped: [rows, 2, D] on the CPU. With a mask ratio the teacher sees the same
// patches as the student (the top ones by stored score, flipped with the image); with 0 (also
// under --distill-dense) every patch. Every rank checks every path first (so all report a missing
// LoRA alike); the files are then shared out over the ranks and the result summed, so every rank
// holds the whole table.
at::Tensor own_lora_features(const model::ClipVision& vit, SurrogatePool& pool, double mask_ratio,
                             dist::Communicator& comm, const c10::Device& device) {
  const auto t0 = Clock::now();
  at::NoGradGuard ng;
  const int64_t D = vit.config().projection_dim;
  const int64_t grid = vit.config().image_size / vit.config().patch_size;
  check_lora_paths(pool, "--distill-weight");
  at::Tensor out = at::zeros({pool.size(), 2, D}, at::kFloat);
  for (size_t fi = 0; fi < pool.files().size(); ++fi) {
    if (static_cast<int>(fi % comm.size()) != comm.rank()) continue;
    const auto& f = pool.files()[fi];
    model::Lora teacher = io::load_peft(f.lora_path, vit.config());
    teacher.to(device);
    for (int64_t first = f.first_row; first < f.first_row + f.rows; first += 64) {
      const int64_t n = std::min<int64_t>(64, f.first_row + f.rows - first);
      std::vector<int64_t> rows(n);
      std::iota(rows.begin(), rows.end(), first);
      const at::Tensor px = model::preprocess_images(pool.images(rows), vit.config(), device);
      for (int flip = 0; flip < 2; ++flip) {
        model::ForwardOptions fo;
        if (mask_ratio > 0) {
          const at::Tensor sc = pool.patch_scores().narrow(0, first, n);
          fo.patch_index = top_patches(flip ? flip_patch_scores(sc, grid) : sc, mask_ratio).to(device);
        }
        const at::Tensor feat = vit.forward(flip ? px.flip({3}) : px, fo, &teacher).feature;
        out.narrow(0, first, n).select(1, flip).copy_(feat.to(at::kCPU, at::kFloat));
      }
    }
  }
  at::Tensor d = out.to(device);
  comm.all_reduce_sum(d);
  LOG_INFO("metatrain", "distillation targets: " << pool.size() << " images under their own LoRAs ("
                                                 << (mask_ratio > 0 ? "the kept patches" : "every patch") << "), "
                                                 << seconds_since(t0) << " s");
  return d.cpu();
}

}  // namespace

MetaTrainResult run_metatrain(const MetaTrainConfig& cfg, dist::Communicator& comm, const c10::Device& device) {
  cfg.validate();
  const int W = comm.size(), rank = comm.rank();
  const int E = cfg.episodes_per_step == 0 ? W : cfg.episodes_per_step;
  if (E % W != 0)
    throw InputError("metatrain: --episodes-per-step " + std::to_string(E) + " is not a multiple of the world size " +
                     std::to_string(W));
  const int E_local = E / W;
  const std::string work = cfg.work.empty() ? cfg.out + ".work" : cfg.work;
  const stdfs::path ckpt = stdfs::path(work) / kCheckpoint;
  // Before any work, on every rank: --out and its work directory are new, empty or this command's;
  // the pool was inverted from --model.
  (void)prov::check_output_dir(cfg.out, "metatrain");
  (void)prov::check_output_dir(work, "metatrain-work");
  if (!stdfs::exists(cfg.model)) throw InputError("--model " + cfg.model + ": no such directory");
  const stdfs::path index_path = stdfs::path(cfg.pool) / "index.json";
  const std::string model_digest = io::checked_model_digest(cfg.model);
  std::string pool_digest = "none";
  if (stdfs::exists(index_path)) {
    pool_digest = prov::file_digest(index_path);
    json index;
    try {
      index = json::parse(fs::read_text(index_path));
    } catch (const json::exception& e) {
      throw InputError(index_path.string() + ": invalid JSON (" + e.what() + ")");
    }
    const json had = index.value("settings", json::object()).value("--model (content digest)", json());
    if (had.is_string() && had.get<std::string>() != model_digest)
      throw InputError("--pool " + cfg.pool + " was inverted from another VFM (" +
                       index.value("model", std::string("?")) + ", digest " + had.get<std::string>() +
                       ") than --model " + cfg.model + " (digest " + model_digest +
                       "); meta-train on the VFM the zoo was tuned on");
  }
  json fp = fingerprint(cfg, E);
  fp["model (content digest)"] = model_digest;
  fp["pool (index digest)"] = pool_digest;

  if (stdfs::exists(ckpt) && !cfg.resume && !cfg.restart)
    throw InputError(ckpt.string() + ": a checkpoint exists; pass --resume to continue it or --restart to discard it");
  comm.barrier();
  if (rank == 0) {
    // The marker names the configuration of the run that owns the directory; a --resume that the
    // checkpoint check below refuses must not change it.
    if (cfg.restart || !stdfs::exists(stdfs::path(work) / prov::kMarker))
      prov::claim_output_dir(work, "metatrain-work", fp);
    if (cfg.restart) {
      stdfs::remove(ckpt);
      stdfs::remove(stdfs::path(work) / "metrics.jsonl");
    }
  }
  comm.barrier();

  model::ClipVision vit = model::ClipVision::load(cfg.model);
  const auto& vc = vit.config();
  const int P = (vc.image_size / vc.patch_size) * (vc.image_size / vc.patch_size);
  cfg.lora.validate(vc, "metatrain");
  SurrogatePool pool = SurrogatePool::open(cfg.pool, vc.image_size, P, cfg.cache_mb * (int64_t(1) << 20));
  LOG_INFO("metatrain", cfg.pool << ": " << pool.files().size() << " LoRAs, " << pool.classes().size() << " classes, "
                                 << pool.size() << " images ("
                                 << (pool.cached() ? "held in memory, " : "read on demand, over the cache budget, ")
                                 << pool.image_bytes() / (1 << 20) << " MiB)");
  check_pool_for_episodes(cfg, pool, rank);
  {
    size_t lo = SIZE_MAX, hi = 0;
    int lo_l = INT32_MAX, hi_l = 0;
    for (const auto& c : pool.classes()) {
      lo = std::min(lo, c.rows.size()), hi = std::max(hi, c.rows.size());
      lo_l = std::min(lo_l, c.loras), hi_l = std::max(hi_l, c.loras);
    }
    const size_t kq = static_cast<size_t>(cfg.spec.k_shot + cfg.spec.q_query);
    LOG_INFO("metatrain",
             "real classes: " << lo << " to " << hi << " images each, from " << lo_l << " to " << hi_l << " LoRAs");
    if (lo < 2 * kq)
      LOG_WARN("metatrain", "a class has " << lo << " images, fewer than 2(K+Q) = " << 2 * kq
                                           << ": episodes see nearly every image of it each time (invert a larger "
                                              "--per-class, or let more LoRAs cover each class: zoo --classes)");
  }
  data::ImageSet val;
  const bool have_val = !cfg.val.empty();
  if (have_val) {
    val = data::ImageSet::load(cfg.val);
    model::check_image_shape(val.images().sizes(), vit.config(), cfg.val);
    // Refuses a set too small for the episodes, before any work.
    data::EpisodeSampler check(val, cfg.val_spec, "--val-way, --val-shot or --val-query, or --val");
    (void)check;
  }
  vit.to(device);
  vit.set_precision(cfg.precision);
  at::Tensor teacher_feat;
  if (cfg.distill_weight > 0)
    teacher_feat = own_lora_features(vit, pool, cfg.distill_dense ? 0.0 : cfg.mask_ratio, comm, device);
  const bool resuming = cfg.resume && stdfs::exists(ckpt);
  model::Lora lora(vc, cfg.lora, cfg.seed + 1);
  if (cfg.init == "zoo-mean" && !resuming) init_from_zoo_mean(lora, pool);  // a checkpoint holds the weights
  lora.to(device);
  lora.set_requires_grad(true, false);
  std::vector<at::Tensor> params = lora.parameters(false);
  int64_t n_grad = 0;
  for (const auto& p : params) n_grad += p.numel();
  AdamW opt(params, AdamWConfig{});

  // Resume.
  int64_t start = 0;
  int64_t skipped_total = 0;
  json val0 = nullptr;
  // The meta-LoRA of the best validation so far (highest mean, earliest on a tie), kept on the CPU
  // and in the checkpoint whatever --keep says, so that --keep never changes the training.
  json best_val = nullptr;
  std::vector<at::Tensor> best_params;
  if (resuming) {
    const io::SafetensorsFile f = io::SafetensorsFile::open(ckpt.string());
    const auto& meta = f.metadata();
    json want = fp;  // checkpoints written before the digests were recorded compare without them
    json had_fp = meta.count("fingerprint") ? json::parse(meta.at("fingerprint")) : json();
    for (const char* key : {"model (content digest)", "pool (index digest)"})
      if (had_fp.is_object() && !had_fp.contains(key)) want.erase(key);
    if (!had_fp.is_object() || had_fp != want)
      throw InputError(ckpt.string() + ": checkpoint of another configuration (" +
                       (meta.count("fingerprint") ? meta.at("fingerprint") : std::string("none")) +
                       "); use --restart to discard it");
    std::map<std::string, at::Tensor> t;
    for (const auto& [name, _] : f.tensors()) t[name] = f.tensor(name);
    // The checkpoint's tensor PREFIX.i, shaped as parameter i.
    auto param_like = [&](const std::string& prefix, size_t i) -> const at::Tensor& {
      const std::string key = prefix + "." + std::to_string(i);
      if (!t.count(key) || !t[key].sizes().equals(params[i].sizes()))
        throw InputError(ckpt.string() + ": missing or mis-shaped " + key);
      return t[key];
    };
    {
      at::NoGradGuard ng;
      for (size_t i = 0; i < params.size(); ++i) params[i].copy_(param_like("lora", i));
    }
    opt.load_state(t);
    if (!meta.count("step")) throw InputError(ckpt.string() + ": no step in the metadata");
    start = std::stoll(meta.at("step"));  // Adam's own count lags it by the skipped steps
    if (meta.count("skipped")) skipped_total = std::stoll(meta.at("skipped"));
    if (meta.count("val0")) val0 = json::parse(meta.at("val0"));
    if (meta.count("best_val")) best_val = json::parse(meta.at("best_val"));
    if (!best_val.is_null())  // the best validation's meta-LoRA
      for (size_t i = 0; i < params.size(); ++i) best_params.push_back(param_like("best", i).clone());
    LOG_INFO("metatrain", "resumed from " << ckpt.string() << " at step " << start);
    // Elastic: episode slot j of step s is drawn from (seed, j, s) whatever the world size, so a
    // checkpoint of W ranks continues the same schedule on W' ranks (E stays a multiple of W').
    if (meta.count("world_size") && std::stoi(meta.at("world_size")) != W)
      LOG_INFO("metatrain", "checkpointed at world size " << meta.at("world_size") << ", resumed at " << W
                                                          << ": the same episodes per step (" << E << "), now "
                                                          << E_local << " per rank");
  }
  if (start > cfg.steps)
    throw InputError(ckpt.string() + ": checkpoint at step " + std::to_string(start) + " is past --steps " +
                     std::to_string(cfg.steps));

  // Metrics: drop lines past the checkpoint (from a run that died after it).
  const stdfs::path metrics_path = stdfs::path(work) / "metrics.jsonl";
  std::ofstream metrics;
  if (rank == 0) {
    std::string kept;
    if (stdfs::exists(metrics_path)) {
      std::istringstream in(fs::read_text(metrics_path));
      for (std::string line; std::getline(in, line);) {
        try {
          if (!line.empty() && json::parse(line).value("step", int64_t(0)) <= start) kept += line + "\n";
        } catch (const json::exception&) {
        }
      }
    }
    fs::write_text(metrics_path, kept);
    metrics.open(metrics_path, std::ios::app);
  }
  auto emit = [&](const json& line) {
    if (rank != 0) return;
    metrics << line.dump() << "\n" << std::flush;
    if (!metrics) fs::throw_write_error(metrics_path);  // disk full: say so rather than lose lines
  };

  auto validate_now = [&](int64_t step) -> json {
    if (!have_val) return nullptr;
    const auto t0 = Clock::now();
    const at::Tensor feats = eval::embed_all(vit, &lora, val, comm);
    const eval::Accuracy a =
        eval::evaluate_prototypes(feats, val, cfg.val_spec, cfg.val_episodes, cfg.seed + kValSeedOffset, comm);
    json j = {{"step", step},
              {"val_mean", a.mean},
              {"val_ci95", a.ci95},
              {"val_episodes", a.episodes},
              {"val_seconds", seconds_since(t0)}};
    // Every rank holds the same reduced accuracy and the same weights.
    if (best_val.is_null() || a.mean > best_val["val_mean"].get<double>()) {
      best_val = j;
      best_params.clear();
      for (const auto& p : params)
        best_params.push_back(p.detach().to(at::kCPU, /*non_blocking=*/false, /*copy=*/true));
    }
    LOG_INFO("metatrain", "validation at step " << step << ": " << log::fixed(a.mean) << " +- " << log::fixed(a.ci95)
                                                << " % (" << cfg.val_spec.n_way << "-way " << cfg.val_spec.k_shot
                                                << "-shot, " << a.episodes << " episodes of " << cfg.val << ")");
    emit(j);
    return j;
  };

  auto save_checkpoint = [&](int64_t step) {
    if (rank != 0) return;
    std::map<std::string, at::Tensor> t;
    for (size_t i = 0; i < params.size(); ++i) t["lora." + std::to_string(i)] = params[i].detach().cpu();
    for (auto& [k, v] : opt.state()) t[k] = v.cpu();
    for (size_t i = 0; i < best_params.size(); ++i) t["best." + std::to_string(i)] = best_params[i];
    io::save_safetensors(ckpt.string(), t,
                         {{"fingerprint", fp.dump()},
                          {"step", std::to_string(step)},
                          {"skipped", std::to_string(skipped_total)},
                          {"val0", val0.dump()},
                          {"best_val", best_val.dump()},
                          {"world_size", std::to_string(W)},
                          {"rng", "episodes are drawn from make_rng(seed, slot, step): the step is the RNG state"}});
  };

  auto check_replicas = [&](int64_t step) {
    const std::uint64_t h = dist::hash_tensors(params);
    const auto all = comm.all_gather_u64(h);
    for (int r = 1; r < W; ++r)
      if (all[r] != all[0]) {
        std::ostringstream os;
        os << "metatrain: replicas diverged at step " << step << ": rank 0 hash " << std::hex << all[0] << ", rank "
           << std::dec << r << " hash " << std::hex << all[r];
        throw RuntimeError(os.str());
      }
    return h;
  };

  if (start == 0 && have_val) val0 = validate_now(0);
  const double rss_before = peak_rss_mb();
  cuda_peak_mb(device, /*reset=*/true);  // the training loop's peak, without validation

  BatchMaker maker(cfg, pool, vc, E, rank, W, /*normalise_here=*/!device.is_cuda(), teacher_feat);
  const at::Tensor query_labels = data::episode_labels(cfg.spec.n_way, cfg.spec.q_query).to(device);
  const int per_episode = cfg.spec.n_way * (cfg.spec.k_shot + cfg.spec.q_query);
  const int n_support = cfg.spec.n_way * cfg.spec.k_shot;

  install_stop_handlers();
  Progress progress("metatrain", "meta-training", cfg.steps - start, "steps", 10.0);
  double t_wait = 0, t_prep = 0, t_compute = 0, t_reduce = 0, t_imbalance = 0, t_total = 0;
  int64_t timed_steps = 0;
  double win_loss = 0, win_correct = 0, win_queries = 0, win_time = 0;
  int64_t win_steps = 0;
  BadStepGuard guard("metatrain", cfg.max_bad_steps, "; last good checkpoint: " + ckpt.string(), skipped_total);
  const int64_t warm_steps = 2;  // excluded from the throughput figures (allocations, first touches)
  json last_val = nullptr;
  MetaTrainResult result;
  bool stopped = false;
  int64_t step = start;
  {
    Prefetcher prefetch(maker, start, cfg.steps, cfg.prefetch);
    for (; step < cfg.steps; ++step) {
      const auto t_step = Clock::now();
      Batch b = prefetch.get(step);
      const double wait = seconds_since(t_step);
      const auto t_c = Clock::now();
      model::ForwardOptions fo;
      if (b.patch_index.defined()) fo.patch_index = b.patch_index.to(device);
      at::Tensor feat;
      {
        const at::Tensor px = b.pixels.defined() ? b.pixels.to(device) : model::preprocess_images(b.u8, vc, device);
        feat = vit.forward(px, fo, &lora).feature;
      }
      feat = feat.to(at::kFloat);  // prototypes and losses in float32
      at::Tensor tfeat;
      if (b.teacher_feat.defined()) tfeat = b.teacher_feat.to(device);
      at::Tensor loss_sum = at::zeros({}, feat.options());
      at::Tensor correct = at::zeros({}, feat.options());
      for (int e = 0; e < E_local; ++e) {
        const at::Tensor f = feat.narrow(0, int64_t(e) * per_episode, per_episode);
        const at::Tensor logits =
            eval::prototype_logits(f.narrow(0, 0, n_support), f.narrow(0, n_support, per_episode - n_support),
                                   cfg.spec.n_way, cfg.spec.k_shot) /
            cfg.temperature;
        at::Tensor loss = at::cross_entropy_loss(logits, query_labels);
        if (b.teacher[e].defined()) {
          const at::Tensor log_p = at::log_softmax(b.teacher[e].to(device), -1);
          const at::Tensor kl = (log_p.exp() * (log_p - at::log_softmax(logits, -1))).sum(-1).mean();
          loss = loss + cfg.kl_weight * kl;
        }
        if (tfeat.defined())  // mean over the episode's images of the squared distance / D
          loss = loss + cfg.distill_weight * (f - tfeat.narrow(0, int64_t(e) * per_episode, per_episode)).pow(2).mean();
        loss_sum = loss_sum + loss;
        correct = correct + logits.detach().argmax(-1).eq(query_labels).sum().to(feat.scalar_type());
      }
      opt.zero_grad();
      (loss_sum / double(E_local)).backward();
      // One flat buffer: gradients, then loss sum, correct queries and the stop flag.
      std::vector<at::Tensor> parts;
      for (auto& p : params)
        parts.push_back(p.grad().defined() ? p.grad().reshape({-1}) : at::zeros({p.numel()}, p.options()));
      const double flag = stop_requested() ? 1.0 : 0.0;
      parts.push_back(at::stack({loss_sum.detach(), correct, at::full({}, flag, feat.options())}));
      at::Tensor flat = at::cat(parts);
      const double t_fwd_bwd = seconds_since(t_c);
      double imbalance = 0;
      if (cfg.sync_timing) {  // separate waiting for the slowest rank from the transfer itself
        const auto t_b = Clock::now();
        comm.barrier();
        imbalance = seconds_since(t_b);
      }
      env::fault_point(rank, "metatrain");
      const auto t_r = Clock::now();
      comm.all_reduce_sum(flat);
      const double reduce = seconds_since(t_r);
      at::Tensor grads = flat.narrow(0, 0, n_grad);
      grads.div_(double(W));
      const at::Tensor tail = flat.narrow(0, n_grad, 3).cpu();
      const double g_loss = tail[0].item<double>(), g_correct = tail[1].item<double>();
      const bool stop_now = tail[2].item<double>() > 0;
      const bool finite = std::isfinite(g_loss) && grads.isfinite().all().item<bool>();
      const int64_t cyc = cfg.cycle == 0 ? cfg.steps : cfg.cycle;
      const double lr_now = cyclic_warmup_cosine(step, cyc, std::min(cfg.warmup, cyc - 1), cfg.lr_min, cfg.lr);
      // Every rank sees the same reduced values, so all apply or all skip the step.
      if (guard.ok(finite, step)) {
        int64_t off = 0;
        at::NoGradGuard ng;
        for (auto& p : params) {
          p.mutable_grad() = grads.narrow(0, off, p.numel()).view(p.sizes());
          off += p.numel();
        }
        clip_grad_norm(params, cfg.clip_norm);
        opt.step(lr_now);
      }
      skipped_total = guard.skipped();
      const double total = seconds_since(t_step);
      if (step - start >= warm_steps) {
        t_wait += wait;
        t_prep += b.prep_seconds;
        t_compute += t_fwd_bwd;
        t_reduce += reduce;
        t_imbalance += imbalance;
        t_total += total;
        ++timed_steps;
      }
      win_loss += g_loss;
      win_correct += g_correct;
      win_queries += double(E) * cfg.spec.n_way * cfg.spec.q_query;
      win_time += total;
      ++win_steps;
      progress.advance(1);
      const bool last = step + 1 == cfg.steps;
      if ((step + 1) % cfg.log_every == 0 || last) {
        const json line = {{"step", step + 1},
                           {"loss", win_loss / (double(win_steps) * E)},
                           {"train_acc", 100.0 * win_correct / win_queries},
                           {"lr", lr_now},
                           {"episodes_per_s", double(win_steps) * E / win_time},
                           {"skipped", skipped_total}};
        emit(line);
        LOG_DEBUG("metatrain", line.dump());
        win_loss = win_correct = win_queries = win_time = 0;
        win_steps = 0;
      }
      if (env::fault_point(rank, "replica")) {  // test hook: the replica check must catch this
        at::NoGradGuard ng;
        params[0].add_(1e-3);
      }
      if (cfg.hash_every > 0 && (step + 1) % cfg.hash_every == 0) check_replicas(step + 1);
      if (have_val && cfg.val_every > 0 && (step + 1) % cfg.val_every == 0 && !last) last_val = validate_now(step + 1);
      if ((step + 1) % cfg.checkpoint_every == 0 || last) save_checkpoint(step + 1);
      const bool stop_after = cfg.stop_after > 0 && step + 1 - start >= cfg.stop_after && !last;
      if ((stop_now || stop_after) && !last) {
        save_checkpoint(step + 1);
        comm.barrier();
        LOG_INFO("metatrain", (stop_now ? "stop signal received" : "--stop-after reached")
                                  << ": checkpoint at step " << step + 1 << " in " << ckpt.string()
                                  << "; the same command with --resume continues");
        stopped = true;
        ++step;
        break;
      }
    }
  }
  result.step = step;
  if (stopped) return result;
  progress.finish();

  const double gpu_peak = cuda_peak_mb(device, false);
  const std::uint64_t hash = check_replicas(cfg.steps);
  const json final_val = validate_now(cfg.steps);
  // --keep best: the written meta-LoRA is the best validation's (the last one's when that is best).
  const bool keep_best = cfg.keep == "best" && !best_val.is_null();
  const int64_t kept_step = keep_best ? best_val["step"].get<int64_t>() : cfg.steps;
  if (keep_best && kept_step != cfg.steps) {
    at::NoGradGuard ng;
    for (size_t i = 0; i < params.size(); ++i) params[i].copy_(best_params[i]);
  }
  const double rss_peak = peak_rss_mb();
  const auto share = [&](double x) { return t_total > 0 ? x / t_total : 0.0; };
  json report = {{"model", cfg.model},
                 {"pool", cfg.pool},
                 {"val", cfg.val},
                 {"steps", cfg.steps},
                 {"world_size", W},
                 {"episodes_per_step", E},
                 {"episode", {{"way", cfg.spec.n_way}, {"shot", cfg.spec.k_shot}, {"query", cfg.spec.q_query}}},
                 {"mask_ratio", cfg.mask_ratio},
                 {"precision", model::precision_name(cfg.precision)},
                 {"tokens_per_image", 1 + P - static_cast<int64_t>(cfg.mask_ratio * P)},
                 {"skipped_steps", skipped_total},
                 {"replica_hash",
                  [&] {
                    std::ostringstream os;
                    os << std::hex << hash;
                    return os.str();
                  }()},
                 {"val_initial", val0},
                 {"val_final", final_val},
                 {"val_best", best_val},
                 {"keep", cfg.keep},
                 {"kept_step", kept_step},
                 {"val_kept", keep_best ? best_val : final_val},
                 {"timing",
                  {{"timed_steps", timed_steps},
                   {"episodes_per_s", t_total > 0 ? double(timed_steps) * E / t_total : 0.0},
                   {"step_seconds", timed_steps ? t_total / timed_steps : 0.0},
                   {"data_wait_share", share(t_wait)},
                   {"data_prep_share", share(t_prep)},
                   {"prefetch", cfg.prefetch},
                   {"forward_backward_share", share(t_compute)},
                   {"all_reduce_share", share(t_reduce)},
                   {"sync_timing", cfg.sync_timing},
                   {"imbalance_wait_share", share(t_imbalance)}}},
                 {"memory",
                  {{"device", device.str()},
                   {"peak_rss_mb", rss_peak},
                   {"rss_before_training_mb", rss_before},
                   {"cuda_peak_allocated_mb", gpu_peak},
                   {"pool_cached", pool.cached()},
                   {"pool_image_mb", double(pool.image_bytes()) / (1 << 20)}}},
                 {"fingerprint", fp}};
  // Peak RSS of every rank (rank 0 writes the report).
  const auto rss_all = comm.all_gather_f64(rss_peak);
  report["memory"]["peak_rss_mb_per_rank"] = rss_all;
  if (rank == 0) {
    lora.to(c10::Device(at::kCPU));
    io::save_peft(cfg.out, lora, cfg.model,
                  {{"metatrain.json", report.dump(2) + "\n"}, {prov::kMarker, prov::marker_text("metatrain", fp)}});
    auto val_text = [](const json& v) {
      return v.is_null() ? std::string("-") : log::fixed(v["val_mean"].get<double>());
    };
    LOG_INFO(
        "metatrain",
        "wrote " << cfg.out << " (PEFT adapter + metatrain.json); "
                 << (val0.is_null() && final_val.is_null()
                         ? std::string("no validation (--val not given)")
                         : "val " + val_text(val0) + " -> " + val_text(final_val) + " %" +
                               (cfg.keep == "best" ? ", kept the best validation's meta-LoRA (step " +
                                                         std::to_string(kept_step) + ", " + val_text(best_val) + " %)"
                                                   : std::string()))
                 << ", "
                 << (timed_steps > 0 ? log::fixed(report["timing"]["episodes_per_s"].get<double>()) + " episodes/s"
                                     : std::string("too few steps to time")));
  }
  comm.barrier();
  result.finished = true;
  result.report = report.dump();
  return result;
}

}  // namespace lorarec::train
