#include "lorarecycle/invert/pool.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <nlohmann/json.hpp>
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <optional>
#include <sstream>

#include "lorarecycle/data/image_set.h"
#include "lorarecycle/data/surrogate_pool.h"
#include "lorarecycle/data/zoo_manifest.h"
#include "lorarecycle/dist/communicator.h"
#include "lorarecycle/io/hdf5.h"
#include "lorarecycle/io/safetensors.h"
#include "lorarecycle/model/peft.h"
#include "lorarecycle/util/env.h"
#include "lorarecycle/util/error.h"
#include "lorarecycle/util/fs.h"
#include "lorarecycle/util/log.h"
#include "lorarecycle/util/progress.h"
#include "lorarecycle/util/provenance.h"

namespace lorarec::invert {
namespace {
using json = nlohmann::json;
constexpr std::uint64_t kRealStream = 0x401;  // permutation of a class's images (--real-images)
constexpr std::uint64_t kCoStream = 0x402;    // co-teachers drawn per LoRA and class (--co-teachers)
// A LoRA's candidate images (--retrieve). It shares kCoStream's number, which is harmless: the two
// options exclude each other (check_invert_options), and the pools written with it keep it.
constexpr std::uint64_t kRetrieveStream = kCoStream;
namespace stdfs = std::filesystem;

// Per-rank progress files, read by rank 0 to log the whole job's rate and ETA without a collective
// (ranks finish LoRAs at different times).
void write_progress(const stdfs::path& dir, int rank, double done, double total, double seconds) {
  fs::write_text(dir / ("rank_" + std::to_string(rank) + ".json"),
                 json({{"done", done}, {"total", total}, {"seconds", seconds}}).dump());
}

// unit: what done and total count ("image-iterations" when inverting, "images" when storing).
void log_aggregate(const stdfs::path& dir, int world, const char* unit) {
  double done = 0, total = 0, rate = 0;
  for (int r = 0; r < world; ++r) {
    try {
      const json j = json::parse(fs::read_text(dir / ("rank_" + std::to_string(r) + ".json")));
      done += j.at("done").get<double>();
      total += j.at("total").get<double>();
      const double s = j.at("seconds").get<double>();
      if (s > 0) rate += j.at("done").get<double>() / s;
    } catch (const std::exception&) {
      // not written yet
    }
  }
  const double eta = rate > 0 ? (total - done) / rate : -1;
  if (total <= 0) return;
  LOG_INFO("invert", "all ranks: " << static_cast<long long>(done) << "/" << static_cast<long long>(total) << " "
                                   << unit << " (" << log::fixed(100.0 * done / total, 0) << "%), " << log::sig(rate)
                                   << " " << unit << "/s, ETA " << clock_str(eta));
}

void write_chunk(std::string& out, const char* type, const std::string& data) {
  auto be32 = [&](std::uint32_t v) {
    for (int i = 3; i >= 0; --i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  };
  be32(static_cast<std::uint32_t>(data.size()));
  const std::string body = std::string(type, 4) + data;
  out += body;
  be32(static_cast<std::uint32_t>(crc32(0, reinterpret_cast<const Bytef*>(body.data()), body.size())));
}

}  // namespace

std::vector<int> lpt_assign(const std::vector<double>& costs, int ranks) {
  std::vector<size_t> order(costs.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return costs[a] > costs[b]; });
  std::vector<double> load(ranks, 0.0);
  std::vector<int> bin(costs.size(), 0);
  for (size_t i : order) {
    const int r = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
    bin[i] = r;
    load[r] += costs[i];
  }
  return bin;
}

void write_png_grid(const std::string& path, const at::Tensor& images, int cols) {
  const int64_t n = images.size(0), h = images.size(1), w = images.size(2);
  const int64_t rows = (n + cols - 1) / cols, W = cols * (w + 1) + 1, H = rows * (h + 1) + 1;
  at::Tensor canvas = at::full({H, W, 3}, 255, at::kByte);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = i / cols, c = i % cols;
    canvas.slice(0, 1 + r * (h + 1), 1 + r * (h + 1) + h)
        .slice(1, 1 + c * (w + 1), 1 + c * (w + 1) + w)
        .copy_(images[i]);
  }
  std::string raw;
  const auto* px = canvas.data_ptr<std::uint8_t>();
  for (int64_t y = 0; y < H; ++y) {
    raw.push_back('\0');  // filter: none
    raw.append(reinterpret_cast<const char*>(px + y * W * 3), W * 3);
  }
  uLongf zlen = compressBound(raw.size());
  std::string z(zlen, '\0');
  if (compress2(reinterpret_cast<Bytef*>(z.data()), &zlen, reinterpret_cast<const Bytef*>(raw.data()), raw.size(), 6) !=
      Z_OK)
    throw RuntimeError("PNG compression failed for " + path);
  z.resize(zlen);
  std::string png = "\x89PNG\r\n\x1a\n";
  std::string ihdr;
  for (std::uint32_t v : {static_cast<std::uint32_t>(W), static_cast<std::uint32_t>(H)})
    for (int i = 3; i >= 0; --i) ihdr.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  ihdr += std::string("\x08\x02\x00\x00\x00", 5);  // 8-bit RGB, no interlace
  write_chunk(png, "IHDR", ihdr);
  write_chunk(png, "IDAT", z);
  write_chunk(png, "IEND", "");
  fs::write_text(path, png);
}

std::vector<CoTeacherPlan> plan_co_teachers(const data::ZooEntry& lora, const std::vector<data::ZooEntry>& zoo, int M,
                                            int per_class, std::uint64_t seed) {
  std::error_code ec;
  const stdfs::path own = stdfs::weakly_canonical(lora.dir, ec);  // a sub-zoo's link is the LoRA itself
  const int N = static_cast<int>(lora.classes.size());
  std::map<size_t, CoTeacherPlan> plans;  // by zoo index
  for (int l = 0; l < N && M > 0; ++l) {
    std::vector<std::pair<size_t, int64_t>> cover;  // (zoo index, column of the class there)
    for (size_t z = 0; z < zoo.size(); ++z) {
      const auto& cl = zoo[z].classes;
      const auto it = std::find(cl.begin(), cl.end(), lora.classes[l]);
      if (it != cl.end() && stdfs::weakly_canonical(zoo[z].dir, ec) != own) cover.emplace_back(z, it - cl.begin());
    }
    auto rng = data::make_rng(
        seed, kCoStream, static_cast<std::uint64_t>(lora.id) * 1000003u + static_cast<std::uint64_t>(lora.classes[l]));
    std::shuffle(cover.begin(), cover.end(), rng);
    if (static_cast<int>(cover.size()) > M) cover.resize(static_cast<size_t>(M));
    for (const auto& [z, col] : cover) {
      CoTeacherPlan& p = plans[z];
      p.zoo_index = z;
      for (int k = 0; k < per_class; ++k) {
        p.rows.push_back(static_cast<int64_t>(k) * N + l);
        p.labels.push_back(col);
        p.weight.push_back(1.0f / (float(N) * float(per_class) * float(cover.size())));
      }
    }
  }
  std::vector<CoTeacherPlan> out;
  for (auto& [z, p] : plans) out.push_back(std::move(p));
  return out;
}

json pool_settings(const InvertJobConfig& cfg) {
  const InversionConfig& v = cfg.inv;
  std::string prune;
  for (const auto& [layer, ratio] : v.prune)
    prune += (prune.empty() ? "" : ",") + std::to_string(layer) + ":" + log::sig(ratio);
  json s = {{"--zoo (manifest digest)", prov::file_digest(stdfs::path(cfg.zoo) / data::kZooManifestFile)},
            {"--model (content digest)", io::checked_model_digest(cfg.model)},
            {"--per-class", v.per_class},
            {"--seed", v.seed},
            {"--prune", prune.empty() ? "none" : prune}};
  // Recorded only for bf16, so that fp32 pools written before the option existed still match.
  if (cfg.precision != model::Precision::kFp32) s["--precision"] = model::precision_name(cfg.precision);
  if (!cfg.real_images.empty()) {  // the control: real images, nothing inverted
    s["--real-images (content digest)"] = prov::file_digest(cfg.real_images);
    return s;
  }
  if (!cfg.retrieve.empty()) {  // public images chosen by the LoRA, nothing inverted
    s["--retrieve (content digest)"] = prov::file_digest(cfg.retrieve);
    s["--retrieve-candidates"] = cfg.retrieve_candidates;
    return s;
  }
  const bool use_prior = !cfg.prior.empty() && v.w_bn > 0;
  s.update({{"--iterations", v.iterations},
            {"--lr", v.lr},
            {"--w-ce", v.w_ce},
            {"--w-bn", use_prior ? v.w_bn : 0.0},
            {"--w-tv", v.w_tv},
            {"--w-l2", v.w_l2},
            {"--w-div", v.w_div},
            {"--jitter", v.jitter},
            {"--jitter-per-image", v.per_image},
            {"--target-mix", v.target_mix},
            {"--no-flip", !v.flip},
            {"--gray", v.gray},
            {"--prune-start", v.prune_start},
            {"--full-last-layer", !v.cls_only_last}});
  if (use_prior) s["--prior (content digest)"] = io::checked_model_digest(cfg.prior);
  // Recorded only when used, so that pools written before these options existed still match.
  if (v.zoom > 0) s["--zoom"] = v.zoom;
  if (v.affine > 0) s["--affine"] = v.affine;
  if (v.stop_confidence > 0) s["--stop-confidence"] = v.stop_confidence;
  if (v.init_lowres > 0) s["--init-lowres"] = v.init_lowres;
  if (v.fourier > 0) s["--fourier"] = v.fourier;
  if (v.strokes > 0) s["--strokes"] = v.strokes;
  if (v.white_border > 0) s["--white-border"] = v.white_border;
  if (!cfg.init_images.empty()) s["--init-images (content digest)"] = prov::file_digest(cfg.init_images);
  if (v.co_teachers > 0) {
    s["--co-teachers"] = v.co_teachers;
    s["--w-co"] = v.w_co;
    s["--co-teacher-zoo (manifest digest)"] = prov::file_digest(
        stdfs::path(cfg.co_teacher_zoo.empty() ? cfg.zoo : cfg.co_teacher_zoo) / data::kZooManifestFile);
  }
  if (!cfg.student.empty() && v.w_adv > 0) {
    s["--student (content digest)"] = model::adapter_digest(cfg.student);
    s["--w-adv"] = v.w_adv;
    s["--adv-temperature"] = v.adv_temperature;
  }
  if (!cfg.feature_prior.empty()) {
    s["--feature-prior (content digest)"] = prov::file_digest(cfg.feature_prior);
    s["--w-feat"] = v.w_feat;
    s["--feature-prior-samples"] = v.feature_prior_samples;
  }
  return s;
}

namespace {

// `invert` as phases: set-up (inputs, the earlier run's files, directories, models), the LoRAs
// assigned to this rank, each inverted (or, for the control, filled with real images) and written,
// and the pool's index and summary (rank 0).
class InvertJob {
 public:
  InvertJob(const InvertJobConfig& cfg, dist::Communicator& comm, const c10::Device& device)
      : cfg_(cfg), comm_(comm), device_(device), out_(cfg.out), progress_dir_(stdfs::path(cfg.out) / ".progress") {}

  void set_up() {
    if (cfg_.model.empty() || cfg_.zoo.empty() || cfg_.out.empty())
      throw InputError("invert: --model, --zoo and --out are required");
    if (!stdfs::exists(cfg_.model)) throw InputError("--model " + cfg_.model + ": no such directory");
    for (const auto& [option, file] : {std::pair<const char*, const std::string&>{"--real-images", cfg_.real_images},
                                       {"--init-images", cfg_.init_images},
                                       {"--retrieve", cfg_.retrieve},
                                       {"--feature-prior", cfg_.feature_prior},
                                       {"--student", cfg_.student}})
      if (!file.empty() && !stdfs::exists(file)) throw InputError(std::string(option) + " " + file + ": no such file");
    jobs_ = data::ZooManifest::read(cfg_.zoo).loras;
    if (cfg_.inv.co_teachers > 0)
      co_zoo_ = cfg_.co_teacher_zoo.empty() ? jobs_ : data::ZooManifest::read(cfg_.co_teacher_zoo).loras;
    // Before any work, on every rank (each reaches the same verdict): whose directory is --out,
    // and do its finished files have today's settings?
    (void)prov::check_output_dir(out_, "pool");
    settings_ = pool_settings(cfg_);
    for (const data::ZooEntry& j : jobs_) model::check_base_model(j.dir, cfg_.model);  // every LoRA tuned on --model
    if (!cfg_.co_teacher_zoo.empty())  // and every co-teacher from another zoo
      for (const data::ZooEntry& j : co_zoo_) model::check_base_model(j.dir, cfg_.model);
    if (!cfg_.student.empty()) model::check_base_model(cfg_.student, cfg_.model);  // and the student
    const std::vector<stdfs::path> earlier = check_earlier_files();
    comm_.barrier();
    if (comm_.rank() == 0) prepare_out(earlier);
    comm_.barrier();
    load_models();
    assign();
  }

  void run() {
    std::ostringstream prior_note;
    if (prior_)
      prior_note << ", BN prior " << cfg_.prior << " at weight " << cfg_.inv.w_bn;
    else
      prior_note << (cfg_.prior.empty() ? ", no BN prior (--prior not given)" : ", no BN prior (--w-bn 0)");
    if (student_) prior_note << ", against the student " << cfg_.student << " at weight " << cfg_.inv.w_adv;
    LOG_INFO("invert", jobs_.size() << " LoRAs, " << cfg_.inv.per_class << " images per class, " << cfg_.inv.iterations
                                    << " iterations" << prior_note.str() << "; rank 0 inverts " << mine_.size());
    t0_ = std::chrono::steady_clock::now();
    write_progress(progress_dir_, comm_.rank(), 0, my_total_, 0);
    for (size_t i : mine_) {
      const Surrogates s = make_surrogates(i);
      const auto tw = std::chrono::steady_clock::now();
      write(jobs_[i], s);
      hdf5_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - tw).count();
      if (cfg_.preview)
        write_png_grid((out_ / (data::zoo_entry_name(jobs_[i].id) + ".png")).string(), s.images,
                       cfg_.inv.per_class > 1 ? static_cast<int>(jobs_[i].classes.size()) : 10);
      my_done_ += costs_[i];
      write_progress(progress_dir_, comm_.rank(), my_done_, my_total_, elapsed());
      LOG_INFO_EVERY_RANK("invert", data::pool_file_name(jobs_[i].id)
                                        << ": " << s.images.size(0) << " images, teacher accuracy "
                                        << log::fixed(s.teacher_accuracy, 1) << "%, best loss " << log::sig(s.best_loss)
                                        << " at iteration " << s.best_iteration << ", " << log::fixed(s.seconds, 1)
                                        << " s");
      if (comm_.rank() == 0)
        log_aggregate(progress_dir_, comm_.size(), stores_images() ? "images" : "image-iterations");
      env::fault_point(comm_.rank(), "invert");
    }
  }

  // Collective; rank 0 writes the index and the summary over every LoRA.
  void finish() {
    const auto finish = comm_.all_gather_f64(elapsed());
    const auto hdf5 = comm_.all_gather_f64(hdf5_seconds_);
    const auto inverted = comm_.all_gather_f64(static_cast<double>(mine_.size()));
    comm_.barrier();
    if (comm_.rank() != 0) return;
    std::vector<data::PoolIndexEntry> entries;
    for (const data::ZooEntry& j : jobs_) entries.push_back({data::pool_file_name(j.id), j.id, j.classes});
    json summary = {{"loras", json::array()}};
    json index;
    try {
      index = data::write_pool_index(
          cfg_.out, {{"model", cfg_.model}, {"zoo", cfg_.zoo}, {"settings", settings_}}, entries,
          [&](size_t i, const io::h5::File& f) {
            summary["loras"].push_back({{"lora_id", jobs_[i].id},
                                        {"teacher_accuracy", f.attr_double("/", "teacher_accuracy")},
                                        {"best_loss", f.attr_double("/", "best_loss")},
                                        {"seconds", f.attr_double("/", "seconds")},
                                        {"rank", owner_[i]}});
          });
    } catch (const RuntimeError& e) {
      throw RuntimeError(std::string("invert: ") + e.what() + " after every rank finished");
    }
    double inverted_now = 0, lora_seconds = 0;
    for (double v : inverted) inverted_now += v;
    for (const auto& e : summary["loras"]) lora_seconds += e["seconds"].get<double>();
    summary["inverted_this_run"] = static_cast<int64_t>(inverted_now);  // the rest were complete already
    summary["lora_seconds_total"] = lora_seconds;                       // over every file, when it was made
    summary["rank_finish_seconds"] = finish;                            // this run
    summary["rank_hdf5_seconds"] = hdf5;
    fs::write_text(out_ / data::kPoolSummaryFile, summary.dump(2) + "\n");
    log_summary(index, summary, finish);
  }

 private:
  // The pool files an earlier run left in --out (removed by --restart); without --restart every
  // finished one must have today's settings, be intact and come from today's LoRA.
  std::vector<stdfs::path> check_earlier_files() const {
    std::vector<stdfs::path> earlier;
    if (!stdfs::is_directory(out_)) return earlier;
    for (const auto& e : stdfs::directory_iterator(out_))
      if (e.path().filename().string().rfind("lora_", 0) == 0) earlier.push_back(e.path());
    std::sort(earlier.begin(), earlier.end());
    const stdfs::path zoo(cfg_.zoo);
    for (const auto& p : earlier) {
      if (cfg_.restart || p.extension() != ".h5" || !data::pool_file_complete(p.string())) continue;
      const io::h5::File f = io::h5::File::open_read(p.string());
      if (!f.has_attr("/", "settings"))
        throw InputError(p.string() +
                         ": recorded no settings (written by an older lorarecycle), so it cannot be "
                         "reused safely; --restart discards the pool's files, or choose a new --out");
      const std::string diff =
          prov::first_difference(json::parse(f.attr_string("/", "settings")), settings_, p.string());
      if (!diff.empty()) throw InputError(diff + "; --restart discards the pool's files, or choose a new --out");
      data::check_pool_file_intact(p.string());  // a finished file is reused only when intact
      // ... and only when its LoRA is the one it was inverted from (a retrained LoRA whose
      // manifest entry came out the same must not reuse the old surrogates).
      if (f.has_attr("/", "lora_digest")) {
        const std::string stem = p.stem().string();  // lora_007
        if (stdfs::exists(zoo / stem / model::kPeftWeights) &&
            model::adapter_digest((zoo / stem).string()) != f.attr_string("/", "lora_digest"))
          throw InputError(p.string() + ": inverted from another " + (zoo / stem).string() +
                           " (its weights changed since); --restart discards the pool's files, or choose a new --out");
      }
    }
    return earlier;
  }

  // Rank 0: --restart's removals, the directory's claim, the partial files of an interrupted run.
  void prepare_out(const std::vector<stdfs::path>& earlier) const {
    if (cfg_.restart) {
      for (const auto& p : earlier) stdfs::remove(p);
      for (const char* name : {data::kPoolIndexFile, data::kPoolSummaryFile}) stdfs::remove(out_ / name);
      if (!earlier.empty())
        LOG_INFO("invert", "--restart: removed " << earlier.size() << " files of an earlier run from " << cfg_.out);
    }
    prov::claim_output_dir(out_, "pool", settings_);
    fs::make_dirs(out_);
    fs::make_dirs(progress_dir_);
    (void)fs::remove_temporaries(out_, "invert");
    for (const auto& e : stdfs::directory_iterator(progress_dir_)) stdfs::remove(e.path());
  }

  // The VFM, the BN prior, and for the control the real images with each LoRA's slot per class.
  void load_models() {
    vit_.emplace(model::ClipVision::load(cfg_.model));
    vit_->to(device_);
    vit_->set_precision(cfg_.precision);
    if (!cfg_.prior.empty() && cfg_.inv.w_bn > 0) {  // --w-bn 0: the prior would only cost time
      if (!stdfs::exists(cfg_.prior))
        throw InputError("--prior " + cfg_.prior +
                         ": no such file or directory (the BN prior; --w-bn 0 inverts without one)");
      prior_ = model::ResNet::load(cfg_.prior);
      prior_->to(device_);
    }
    inv_ = cfg_.inv;
    if (!cfg_.init_images.empty() && cfg_.real_images.empty()) {
      const data::ImageSet starts = data::ImageSet::load(cfg_.init_images);
      model::check_image_shape(starts.images().sizes(), vit_->config(), cfg_.init_images);
      inv_.init_images = starts.images();
    }
    if (!cfg_.feature_prior.empty() && cfg_.real_images.empty()) {
      const data::ImageSet set = data::ImageSet::load(cfg_.feature_prior);
      model::check_image_shape(set.images().sizes(), vit_->config(), cfg_.feature_prior);
      inv_.feature_prior = set.images();
    }
    if (!cfg_.student.empty() && cfg_.inv.w_adv > 0 && cfg_.real_images.empty()) {
      student_.emplace(model::load_peft(cfg_.student, vit_->config(), cfg_.model));
      student_->to(device_);
    }
    if (!cfg_.retrieve.empty()) {
      retrieve_ = data::ImageSet::load(cfg_.retrieve);
      model::check_image_shape(retrieve_->images().sizes(), vit_->config(), cfg_.retrieve);
    }
    slot_.assign(jobs_.size(), {});
    if (cfg_.real_images.empty()) return;
    real_ = data::ImageSet::load(cfg_.real_images);
    model::check_image_shape(real_->images().sizes(), vit_->config(), cfg_.real_images);
    std::map<int64_t, int> seen;
    for (size_t i = 0; i < jobs_.size(); ++i)
      for (int64_t c : jobs_[i].classes) {
        if (c < 0 || c >= real_->num_classes())
          throw InputError(cfg_.real_images + ": has no class " + std::to_string(c) + " (LoRA " +
                           std::to_string(jobs_[i].id) + "'s task); --real-images must be the zoo's data");
        slot_[i].push_back(seen[c]++);
      }
  }

  // --real-images or --retrieve: images are stored, nothing is inverted.
  bool stores_images() const { return !cfg_.real_images.empty() || !cfg_.retrieve.empty(); }

  // Cost of a LoRA = images x iterations (classes from the manifest; images alone when they are
  // stored, not inverted); assigned longest first.
  void assign() {
    for (const data::ZooEntry& j : jobs_)
      costs_.push_back(double(j.classes.size()) * cfg_.inv.per_class * (stores_images() ? 1 : cfg_.inv.iterations));
    owner_ = lpt_assign(costs_, comm_.size());
    for (size_t i = 0; i < jobs_.size(); ++i)
      if (owner_[i] == comm_.rank()) {
        if (data::pool_file_complete((out_ / data::pool_file_name(jobs_[i].id)).string())) continue;
        mine_.push_back(i);
        my_total_ += costs_[i];
      }
  }

  Surrogates make_surrogates(size_t i) const {
    const data::ZooEntry& j = jobs_[i];
    const int N = static_cast<int>(j.classes.size());
    model::Lora lora = model::load_peft(j.dir, vit_->config(), cfg_.model);
    if (!lora.has_head()) throw InputError(j.dir + ": the LoRA has no classifier head to invert");
    if (lora.head_weight().size(0) != N)
      throw InputError(j.dir + ": its head has " + std::to_string(lora.head_weight().size(0)) +
                       " classes, the zoo manifest lists " + std::to_string(N));
    lora.to(device_);
    if (retrieve_) {  // the seconds include scoring the candidates
      const auto t1 = std::chrono::steady_clock::now();
      return stored_images(lora, retrieved_rows(j, lora), *retrieve_, t1);
    }
    if (!real_) {
      std::vector<CoTeacher> co;
      for (const CoTeacherPlan& p :
           plan_co_teachers(j, co_zoo_, cfg_.inv.co_teachers, cfg_.inv.per_class, cfg_.inv.seed)) {
        const data::ZooEntry& t = co_zoo_[p.zoo_index];
        CoTeacher c{model::load_peft(t.dir, vit_->config(), cfg_.model), at::tensor(p.rows, at::kLong).to(device_),
                    at::tensor(p.labels, at::kLong).to(device_), at::tensor(p.weight, at::kFloat).to(device_)};
        if (!c.lora.has_head()) throw InputError(t.dir + ": a co-teacher LoRA has no classifier head");
        c.lora.to(device_);
        co.push_back(std::move(c));
      }
      return invert_lora(*vit_, lora, prior_ ? &*prior_ : nullptr, inv_, static_cast<std::uint64_t>(j.id),
                         data::zoo_entry_name(j.id), co, student_ ? &*student_ : nullptr);
    }
    // Real images of the LoRA's classes, class-interleaved like surrogates, described alike.
    std::vector<int64_t> rows(static_cast<size_t>(N) * cfg_.inv.per_class);
    for (int l = 0; l < N; ++l) {
      std::vector<int64_t> perm = real_->by_class()[j.classes[l]];
      auto rng = data::make_rng(cfg_.inv.seed, kRealStream, static_cast<std::uint64_t>(j.classes[l]));
      std::shuffle(perm.begin(), perm.end(), rng);
      for (int k = 0; k < cfg_.inv.per_class; ++k)
        rows[static_cast<size_t>(k) * N + l] = perm[(slot_[i][l] * cfg_.inv.per_class + k) % perm.size()];
    }
    return stored_images(lora, rows, *real_, std::chrono::steady_clock::now());
  }

  // Rows of `set` (class-interleaved: row k N + l is image k of label l) stored in place of
  // surrogates, described alike (the LoRA's logits, patch scores, keep mask).
  Surrogates stored_images(const model::Lora& lora, const std::vector<int64_t>& rows, const data::ImageSet& set,
                           std::chrono::steady_clock::time_point t1) const {
    const int64_t N = lora.head_weight().size(0);
    Surrogates s;
    s.images = set.gather(rows);
    if (s.images.size(3) == 1) s.images = s.images.expand({-1, -1, -1, 3}).contiguous();
    s.labels = at::arange(N, at::kInt).repeat({cfg_.inv.per_class});
    describe_images(*vit_, lora, cfg_.inv, s);
    s.best_iteration = 0;
    s.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
    return s;
  }

  // --retrieve: the LoRA's softmax over its candidates (drawn per LoRA, seeded), in chunks without
  // gradients, and the rows retrieve_rows picks from them.
  std::vector<int64_t> retrieved_rows(const data::ZooEntry& j, const model::Lora& lora) const {
    const int64_t M = std::min<int64_t>(cfg_.retrieve_candidates, retrieve_->size());
    std::vector<int64_t> all(static_cast<size_t>(retrieve_->size()));
    std::iota(all.begin(), all.end(), int64_t{0});
    auto rng = data::make_rng(cfg_.inv.seed, kRetrieveStream, static_cast<std::uint64_t>(j.id));
    std::shuffle(all.begin(), all.end(), rng);
    all.resize(static_cast<size_t>(M));
    at::NoGradGuard ng;
    std::vector<at::Tensor> probs;
    constexpr int64_t kChunk = 256;
    for (int64_t from = 0; from < M; from += kChunk) {
      const std::vector<int64_t> part(all.begin() + from, all.begin() + std::min(M, from + kChunk));
      // preprocess takes grey images as they are (one channel for all three)
      const at::Tensor feat =
          vit_->forward(vit_->preprocess(retrieve_->gather(part)), model::ForwardOptions{}, &lora).feature;
      probs.push_back(at::softmax(lora.head(feat).to(at::kFloat), -1).cpu());
    }
    std::vector<int64_t> rows = retrieve_rows(at::cat(probs), cfg_.inv.per_class);
    for (int64_t& r : rows) r = all[static_cast<size_t>(r)];
    return rows;
  }

  // The LoRA's pool file (data/surrogate_pool.h) with invert's attributes.
  void write(const data::ZooEntry& j, const Surrogates& s) const {
    const InversionConfig& v = cfg_.inv;
    // The dataset class of each image (the zoo task's class of its label): surrogates of one real
    // class pool across every LoRA that covers it (DESIGN 2.4).
    const at::Tensor global_class =
        at::tensor(j.classes, at::kLong).index_select(0, s.labels.to(at::kLong)).to(at::kInt);
    const data::PoolArrays arrays{s.images, s.labels, global_class, s.teacher_logits, s.patch_scores, s.keep_mask};
    data::write_pool_file((out_ / data::pool_file_name(j.id)).string(), arrays, cfg_.chunk_images,
                          [&](io::h5::File& f) {
                            f.set_attr("/", "lora_id", int64_t{j.id});
                            f.set_attr("/", "lora_path", j.dir);
                            f.set_attr("/", "seed", static_cast<int64_t>(v.seed));
                            f.set_attr("/", "iterations", int64_t{v.iterations});
                            f.set_attr("/", "per_class", int64_t{v.per_class});
                            f.set_attr("/", "gray", int64_t{v.gray ? 1 : 0});
                            f.set_attr("/", "flip", int64_t{v.flip ? 1 : 0});
                            f.set_attr("/", "jitter_per_image", int64_t{v.per_image ? 1 : 0});
                            f.set_attr("/", "target_mix", v.target_mix);
                            f.set_attr("/", "settings", settings_.dump());
                            f.set_attr("/", "lora_digest", model::adapter_digest(j.dir));
                            if (!real_ && !retrieve_) {  // the loss weights the surrogates were made with
                              f.set_attr("/", "w_ce", v.w_ce);
                              f.set_attr("/", "w_bn", prior_ ? v.w_bn : 0.0);
                              f.set_attr("/", "w_tv", v.w_tv);
                              f.set_attr("/", "w_l2", v.w_l2);
                              f.set_attr("/", "w_div", v.w_div);
                            }
                            if (real_) f.set_attr("/", "real_images", cfg_.real_images);
                            if (retrieve_) f.set_attr("/", "retrieved_from", cfg_.retrieve);
                            f.set_attr("/", "best_loss", s.best_loss);
                            f.set_attr("/", "final_loss", s.final_loss);
                            f.set_attr("/", "best_iteration", int64_t{s.best_iteration});
                            f.set_attr("/", "teacher_accuracy", s.teacher_accuracy);
                            f.set_attr("/", "seconds", s.seconds);
                          });
  }

  void log_summary(const json& index, const json& summary, const std::vector<double>& finish) const {
    double lo = 100, sum = 0, lora_seconds = summary["lora_seconds_total"].get<double>();
    for (const auto& e : summary["loras"]) {
      lo = std::min(lo, e["teacher_accuracy"].get<double>());
      sum += e["teacher_accuracy"].get<double>();
    }
    const double fmax = *std::max_element(finish.begin(), finish.end());
    const double fmin = *std::min_element(finish.begin(), finish.end());
    LOG_INFO("invert", "pool " << cfg_.out << ": " << jobs_.size() << " LoRAs, " << index.at("classes").size()
                               << " real classes, " << index.at("images").get<int64_t>()
                               << " images; teacher accuracy on own surrogates mean "
                               << log::fixed(sum / jobs_.size(), 1) << "%, min " << log::fixed(lo, 1) << "%; "
                               << summary["inverted_this_run"].get<int64_t>()
                               << " inverted in this run (rank finish times " << log::fixed(fmin, 1) << " .. "
                               << log::fixed(fmax, 1) << " s), the rest reused; inversion time of all files "
                               << log::fixed(lora_seconds, 1) << " s");
  }

  double elapsed() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count(); }

  const InvertJobConfig& cfg_;
  dist::Communicator& comm_;
  const c10::Device device_;
  const stdfs::path out_, progress_dir_;
  std::vector<data::ZooEntry> jobs_;
  json settings_;
  std::optional<model::ClipVision> vit_;
  std::optional<model::ResNet> prior_;
  std::optional<data::ImageSet> real_;      // the real-image control (--real-images)
  std::optional<data::ImageSet> retrieve_;  // the public images of --retrieve
  InversionConfig inv_;                     // cfg_.inv with the starting images of --init-images
  std::vector<data::ZooEntry> co_zoo_;      // the co-teachers' zoo (--co-teachers)
  std::optional<model::Lora> student_;      // --student, loaded when --w-adv > 0
  std::vector<std::vector<int>> slot_;      // per LoRA and label: LoRAs before it covering the class
  std::vector<double> costs_;
  std::vector<int> owner_;    // rank of each LoRA
  std::vector<size_t> mine_;  // this rank's LoRAs still to invert
  double my_total_ = 0, my_done_ = 0, hdf5_seconds_ = 0;
  std::chrono::steady_clock::time_point t0_ = std::chrono::steady_clock::now();
};

}  // namespace

void run_invert(const InvertJobConfig& cfg, dist::Communicator& comm, const c10::Device& device) {
  InvertJob job(cfg, comm, device);
  job.set_up();
  job.run();
  job.finish();
}

}  // namespace lorarec::invert
