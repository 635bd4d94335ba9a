#include "lorarecycle/invert/pool.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>

#include "lorarecycle/data/image_set.h"
#include "lorarecycle/dist/communicator.h"
#include "lorarecycle/io/hdf5.h"
#include "lorarecycle/io/peft.h"
#include "lorarecycle/io/safetensors.h"
#include "lorarecycle/train/zoo.h"
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
namespace stdfs = std::filesystem;

// Per-rank progress files, read by rank 0 to log the whole job's rate and ETA without a collective
// (ranks finish LoRAs at different times).
void write_progress(const stdfs::path& dir, int rank, double done, double total, double seconds) {
  fs::write_text(dir / ("rank_" + std::to_string(rank) + ".json"),
                 json({{"done", done}, {"total", total}, {"seconds", seconds}}).dump());
}

void log_aggregate(const stdfs::path& dir, int world) {
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
  LOG_INFO("invert", "all ranks: " << static_cast<long long>(done) << "/" << static_cast<long long>(total)
                                   << " image-iterations (" << log::fixed(100.0 * done / total, 0) << "%), "
                                   << log::sig(rate) << " image-iterations/s, ETA " << clock_str(eta));
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

std::string pool_file_name(int id) { return train::zoo_entry_name(id) + ".h5"; }

bool pool_file_complete(const std::string& path) {
  if (!stdfs::exists(path)) return false;
  try {
    const io::h5::File f = io::h5::File::open_read(path);
    if (!f.has_attr("/", "complete") || f.attr_double("/", "complete") != 1.0) return false;
    const int64_t n = f.shape("/images").at(0);
    // A file of an older layout (per-LoRA class slots in /global_class) is not complete: re-inverted.
    if (!f.has_attr("/", "pool_format") || f.attr_double("/", "pool_format") < kPoolFormat) return false;
    for (const char* d : {"/labels", "/global_class", "/teacher_logits", "/patch_scores", "/keep_mask"})
      if (f.shape(d).at(0) != n) return false;
    return n > 0;
  } catch (const std::exception&) {
    return false;
  }
}

std::string pool_data_digest(const at::Tensor& images, const at::Tensor& labels, const at::Tensor& global_class,
                             const at::Tensor& teacher_logits, const at::Tensor& patch_scores,
                             const at::Tensor& keep_mask) {
  std::uint64_t h = prov::kHashSeed;
  const std::pair<const at::Tensor*, at::ScalarType> parts[] = {
      {&images, at::kByte},          {&labels, at::kInt},         {&global_class, at::kInt},
      {&teacher_logits, at::kFloat}, {&patch_scores, at::kFloat}, {&keep_mask, at::kByte}};
  for (const auto& [t, type] : parts) {
    const at::Tensor c = t->to(at::kCPU, type).contiguous();
    h = prov::hash_bytes(c.data_ptr(), static_cast<std::size_t>(c.numel() * c.element_size()), h);
  }
  return prov::hex(h);
}

void check_pool_file_intact(const std::string& path) {
  const io::h5::File f = io::h5::File::open_read(path);
  if (!f.has_attr("/", "data_digest")) return;
  std::string now;
  try {
    now = pool_data_digest(f.read("/images", 0, -1, at::kByte), f.read("/labels", 0, -1, at::kInt),
                           f.read("/global_class", 0, -1, at::kInt), f.read("/teacher_logits", 0, -1, at::kFloat),
                           f.read("/patch_scores", 0, -1, at::kFloat), f.read("/keep_mask", 0, -1, at::kByte));
  } catch (const Error& e) {
    throw InputError(path + ": corrupt pool file (" + e.what() + "); delete it and re-run invert");
  }
  const std::string had = f.attr_string("/", "data_digest");
  if (now != had)
    throw InputError(path + ": corrupt pool file (its data digest is " + now + ", it was written as " + had +
                     "); delete it and re-run invert");
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

json pool_settings(const InvertJobConfig& cfg) {
  const InversionConfig& v = cfg.inv;
  std::string prune;
  for (const auto& [layer, ratio] : v.prune)
    prune += (prune.empty() ? "" : ",") + std::to_string(layer) + ":" + log::sig(ratio);
  json s = {{"--zoo (manifest digest)", prov::file_digest(stdfs::path(cfg.zoo) / "manifest.json")},
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
  if (v.stop_confidence > 0) s["--stop-confidence"] = v.stop_confidence;
  if (v.init_lowres > 0) s["--init-lowres"] = v.init_lowres;
  return s;
}

void run_invert(const InvertJobConfig& cfg, dist::Communicator& comm, const c10::Device& device) {
  if (cfg.model.empty() || cfg.zoo.empty() || cfg.out.empty())
    throw InputError("invert: --model, --zoo and --out are required");
  const stdfs::path zoo(cfg.zoo), out(cfg.out), progress_dir = stdfs::path(cfg.out) / ".progress";
  const stdfs::path manifest_path = zoo / "manifest.json";
  if (!stdfs::exists(manifest_path)) throw InputError(manifest_path.string() + ": missing (is --zoo a zoo directory?)");
  if (!stdfs::exists(cfg.model)) throw InputError("--model " + cfg.model + ": no such directory");
  if (!cfg.real_images.empty() && !stdfs::exists(cfg.real_images))
    throw InputError("--real-images " + cfg.real_images + ": no such file");
  json manifest;
  try {
    manifest = json::parse(fs::read_text(manifest_path));
  } catch (const json::exception& e) {
    throw InputError(manifest_path.string() + ": invalid JSON (" + e.what() + ")");
  }
  struct Job {
    int id;
    std::string dir;
    int classes;
    std::vector<int64_t> class_ids;  // dataset class id of each local label (the zoo task)
  };
  std::vector<Job> jobs;
  try {
    for (const auto& e : manifest.at("loras"))
      jobs.push_back({e.at("id").get<int>(), (zoo / e.at("dir").get<std::string>()).string(),
                      static_cast<int>(e.at("classes").size()), e.at("classes").get<std::vector<int64_t>>()});
  } catch (const json::exception& e) {
    throw InputError(manifest_path.string() + ": not a zoo manifest (" + e.what() + ")");
  }
  // Before any work, on every rank (each reaches the same verdict): whose directory is --out, and
  // do its finished files have today's settings?
  (void)prov::check_output_dir(out, "pool");
  const json settings = pool_settings(cfg);
  for (const Job& j : jobs) io::check_base_model(j.dir, cfg.model);  // every LoRA tuned on --model
  std::vector<stdfs::path> earlier;  // pool files of an earlier run (removed by --restart)
  if (stdfs::is_directory(out)) {
    for (const auto& e : stdfs::directory_iterator(out)) {
      const std::string name = e.path().filename().string();
      if (name.rfind("lora_", 0) == 0) earlier.push_back(e.path());
    }
    std::sort(earlier.begin(), earlier.end());
    for (const auto& p : earlier) {
      if (cfg.restart || p.extension() != ".h5" || !pool_file_complete(p.string())) continue;
      const io::h5::File f = io::h5::File::open_read(p.string());
      if (!f.has_attr("/", "settings"))
        throw InputError(p.string() +
                         ": recorded no settings (written by an older lorarecycle), so it cannot be "
                         "reused safely; --restart discards the pool's files, or choose a new --out");
      const std::string diff =
          prov::first_difference(json::parse(f.attr_string("/", "settings")), settings, p.string());
      if (!diff.empty()) throw InputError(diff + "; --restart discards the pool's files, or choose a new --out");
      check_pool_file_intact(p.string());  // a finished file is reused only when intact
      // ... and only when its LoRA is the one it was inverted from (a retrained LoRA whose
      // manifest entry came out the same must not reuse the old surrogates).
      if (f.has_attr("/", "lora_digest")) {
        const std::string stem = p.stem().string();  // lora_007
        if (stdfs::exists(zoo / stem / io::kPeftWeights) &&
            io::adapter_digest((zoo / stem).string()) != f.attr_string("/", "lora_digest"))
          throw InputError(p.string() + ": inverted from another " + (zoo / stem).string() +
                           " (its weights changed since); --restart discards the pool's files, or choose a new --out");
      }
    }
  }
  comm.barrier();
  if (comm.rank() == 0) {
    if (cfg.restart) {
      for (const auto& p : earlier) stdfs::remove(p);
      for (const char* name : {"index.json", "summary.json"}) stdfs::remove(out / name);
      if (!earlier.empty())
        LOG_INFO("invert", "--restart: removed " << earlier.size() << " files of an earlier run from " << cfg.out);
    }
    prov::claim_output_dir(out, "pool", settings);
  }
  if (comm.rank() == 0) {
    fs::make_dirs(out);
    fs::make_dirs(progress_dir);
    for (const auto& p : fs::remove_temporaries(out))
      LOG_WARN("invert", "removed the partial file of an interrupted run: " << p);
    for (const auto& e : stdfs::directory_iterator(progress_dir)) stdfs::remove(e.path());
  }
  comm.barrier();

  model::ClipVision vit = model::ClipVision::load(cfg.model);
  vit.to(device);
  vit.set_precision(cfg.precision);
  std::optional<model::ResNet> prior;
  if (!cfg.prior.empty() && cfg.inv.w_bn > 0) {  // --w-bn 0: the prior would only cost time
    if (!stdfs::exists(cfg.prior))
      throw InputError("--prior " + cfg.prior +
                       ": no such file or directory (the BN prior; --w-bn 0 inverts without one)");
    prior = model::ResNet::load(cfg.prior);
    prior->to(device);
  }
  std::optional<data::ImageSet> real;               // the real-image control (--real-images)
  std::vector<std::vector<int>> slot(jobs.size());  // per LoRA and label: LoRAs before it covering the class
  if (!cfg.real_images.empty()) {
    real = data::ImageSet::load(cfg.real_images);
    model::check_image_shape(real->images().sizes(), vit.config(), cfg.real_images);
    std::map<int64_t, int> seen;
    for (size_t i = 0; i < jobs.size(); ++i)
      for (int64_t c : jobs[i].class_ids) {
        if (c < 0 || c >= real->num_classes())
          throw InputError(cfg.real_images + ": has no class " + std::to_string(c) + " (LoRA " +
                           std::to_string(jobs[i].id) + "'s task); --real-images must be the zoo's data");
        slot[i].push_back(seen[c]++);
      }
  }
  // Cost of a LoRA = images x iterations (classes from the manifest); assign longest first.
  std::vector<double> costs;
  for (const Job& j : jobs) costs.push_back(double(j.classes) * cfg.inv.per_class * cfg.inv.iterations);
  const std::vector<int> owner = lpt_assign(costs, comm.size());
  double my_total = 0, my_done = 0;
  std::vector<size_t> mine;
  for (size_t i = 0; i < jobs.size(); ++i)
    if (owner[i] == comm.rank()) {
      if (pool_file_complete((out / pool_file_name(jobs[i].id)).string())) continue;
      mine.push_back(i);
      my_total += costs[i];
    }
  std::ostringstream prior_note;
  if (prior)
    prior_note << ", BN prior " << cfg.prior << " at weight " << cfg.inv.w_bn;
  else
    prior_note << (cfg.prior.empty() ? ", no BN prior (--prior not given)" : ", no BN prior (--w-bn 0)");
  LOG_INFO("invert", jobs.size() << " LoRAs, " << cfg.inv.per_class << " images per class, " << cfg.inv.iterations
                                 << " iterations" << prior_note.str() << "; rank 0 inverts " << mine.size());
  const auto t0 = std::chrono::steady_clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  write_progress(progress_dir, comm.rank(), 0, my_total, 0);
  double hdf5_seconds = 0;
  for (size_t i : mine) {
    const Job& j = jobs[i];
    model::Lora lora = io::load_peft(j.dir, vit.config(), cfg.model);
    if (!lora.has_head()) throw InputError(j.dir + ": the LoRA has no classifier head to invert");
    if (lora.head_weight().size(0) != j.classes)
      throw InputError(j.dir + ": its head has " + std::to_string(lora.head_weight().size(0)) +
                       " classes, the zoo manifest lists " + std::to_string(j.classes));
    lora.to(device);
    Surrogates s;
    if (real) {
      // Real images of the LoRA's classes, class-interleaved like surrogates, described alike.
      const auto t1 = std::chrono::steady_clock::now();
      std::vector<int64_t> rows(static_cast<size_t>(j.classes) * cfg.inv.per_class);
      for (int l = 0; l < j.classes; ++l) {
        std::vector<int64_t> perm = real->by_class()[j.class_ids[l]];
        auto rng = data::make_rng(cfg.inv.seed, kRealStream, static_cast<std::uint64_t>(j.class_ids[l]));
        std::shuffle(perm.begin(), perm.end(), rng);
        for (int k = 0; k < cfg.inv.per_class; ++k)
          rows[static_cast<size_t>(k) * j.classes + l] = perm[(slot[i][l] * cfg.inv.per_class + k) % perm.size()];
      }
      s.images = real->gather(rows);
      if (s.images.size(3) == 1) s.images = s.images.expand({-1, -1, -1, 3}).contiguous();
      s.labels = at::arange(j.classes, at::kInt).repeat({cfg.inv.per_class});
      describe_images(vit, lora, cfg.inv, s);
      s.best_iteration = 0;
      s.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
    } else {
      s = invert_lora(vit, lora, prior ? &*prior : nullptr, cfg.inv, static_cast<std::uint64_t>(j.id),
                      train::zoo_entry_name(j.id));
    }
    const auto tw = std::chrono::steady_clock::now();
    const std::string path = (out / pool_file_name(j.id)).string();
    io::h5::write_file_atomically(path, [&](io::h5::File& f) {
      f.write("/images", s.images, cfg.chunk_images);
      f.write("/labels", s.labels);
      // The dataset class of each image (the zoo task's class of its label): surrogates of one real
      // class pool across every LoRA that covers it (DESIGN 2.4).
      const at::Tensor global_class =
          at::tensor(j.class_ids, at::kLong).index_select(0, s.labels.to(at::kLong)).to(at::kInt);
      f.write("/global_class", global_class);
      f.write("/teacher_logits", s.teacher_logits, cfg.chunk_images);
      f.write("/patch_scores", s.patch_scores, cfg.chunk_images);
      f.write("/keep_mask", s.keep_mask, cfg.chunk_images);
      f.set_attr("/", "lora_id", int64_t{j.id});
      f.set_attr("/", "lora_path", j.dir);
      f.set_attr("/", "seed", static_cast<int64_t>(cfg.inv.seed));
      f.set_attr("/", "iterations", int64_t{cfg.inv.iterations});
      f.set_attr("/", "per_class", int64_t{cfg.inv.per_class});
      f.set_attr("/", "gray", int64_t{cfg.inv.gray ? 1 : 0});
      f.set_attr("/", "flip", int64_t{cfg.inv.flip ? 1 : 0});
      f.set_attr("/", "jitter_per_image", int64_t{cfg.inv.per_image ? 1 : 0});
      f.set_attr("/", "target_mix", cfg.inv.target_mix);
      f.set_attr("/", "settings", settings.dump());
      f.set_attr("/", "lora_digest", io::adapter_digest(j.dir));
      f.set_attr("/", "data_digest",
                 pool_data_digest(s.images, s.labels, global_class, s.teacher_logits, s.patch_scores, s.keep_mask));
      if (!real) {  // the loss weights the surrogates were made with
        f.set_attr("/", "w_ce", cfg.inv.w_ce);
        f.set_attr("/", "w_bn", prior ? cfg.inv.w_bn : 0.0);
        f.set_attr("/", "w_tv", cfg.inv.w_tv);
        f.set_attr("/", "w_l2", cfg.inv.w_l2);
        f.set_attr("/", "w_div", cfg.inv.w_div);
      }
      f.set_attr("/", "pool_format", int64_t{kPoolFormat});
      if (real) f.set_attr("/", "real_images", cfg.real_images);
      f.set_attr("/", "best_loss", s.best_loss);
      f.set_attr("/", "final_loss", s.final_loss);
      f.set_attr("/", "best_iteration", int64_t{s.best_iteration});
      f.set_attr("/", "teacher_accuracy", s.teacher_accuracy);
      f.set_attr("/", "seconds", s.seconds);
      f.set_attr("/", "software", std::string("lorarecycle ") + LORAREC_VERSION);
      f.set_attr("/", "time", prov::now_iso());
      f.set_attr("/", "complete", int64_t{1});
    });
    hdf5_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - tw).count();
    if (cfg.preview)
      write_png_grid((out / (train::zoo_entry_name(j.id) + ".png")).string(), s.images,
                     cfg.inv.per_class > 1 ? j.classes : 10);
    my_done += costs[i];
    write_progress(progress_dir, comm.rank(), my_done, my_total, elapsed());
    LOG_INFO_EVERY_RANK("invert", pool_file_name(j.id) << ": " << s.images.size(0) << " images, teacher accuracy "
                                                       << log::fixed(s.teacher_accuracy, 1) << "%, best loss "
                                                       << log::sig(s.best_loss) << " at iteration " << s.best_iteration
                                                       << ", " << log::fixed(s.seconds, 1) << " s");
    if (comm.rank() == 0) log_aggregate(progress_dir, comm.size());
    env::fault_point(comm.rank(), "invert");
  }
  const double my_seconds = elapsed();
  const auto finish = comm.all_gather_f64(my_seconds);
  const auto hdf5 = comm.all_gather_f64(hdf5_seconds);
  const auto inverted = comm.all_gather_f64(static_cast<double>(mine.size()));
  comm.barrier();
  if (comm.rank() != 0) return;

  // Index and summary over every LoRA (all files complete now).
  json index = {{"format", kPoolFormat},
                {"model", cfg.model},
                {"zoo", cfg.zoo},
                {"settings", settings},
                {"files", json::array()}};
  std::map<int64_t, std::pair<int64_t, std::vector<int>>> by_class;  // dataset class -> (images, LoRAs)
  json summary = {{"loras", json::array()}};
  int64_t images = 0;
  for (size_t i = 0; i < jobs.size(); ++i) {
    const std::string name = pool_file_name(jobs[i].id);
    const std::string path = (out / name).string();
    if (!pool_file_complete(path))
      throw RuntimeError("invert: " + path + " is missing or incomplete after every rank finished");
    const io::h5::File f = io::h5::File::open_read(path);
    const int64_t n = f.shape("/images")[0];
    const int N = static_cast<int>(f.shape("/teacher_logits")[1]);
    images += n;
    index["files"].push_back(
        {{"file", name}, {"lora_id", jobs[i].id}, {"images", n}, {"classes", N}, {"class_ids", jobs[i].class_ids}});
    for (int64_t c : jobs[i].class_ids) by_class[c].second.push_back(jobs[i].id);
    const at::Tensor gc = f.read("/global_class", 0, -1, at::kInt).contiguous();
    const int32_t* g = gc.data_ptr<int32_t>();
    for (int64_t r = 0; r < n; ++r) ++by_class[g[r]].first;
    summary["loras"].push_back({{"lora_id", jobs[i].id},
                                {"teacher_accuracy", f.attr_double("/", "teacher_accuracy")},
                                {"best_loss", f.attr_double("/", "best_loss")},
                                {"seconds", f.attr_double("/", "seconds")},
                                {"rank", owner[i]}});
  }
  index["images"] = images;
  index["classes"] = json::array();
  for (const auto& [c, e] : by_class)
    index["classes"].push_back({{"class", c}, {"images", e.first}, {"loras", e.second}});
  double inverted_now = 0, lora_seconds = 0;
  for (double v : inverted) inverted_now += v;
  for (const auto& e : summary["loras"]) lora_seconds += e["seconds"].get<double>();
  summary["inverted_this_run"] = static_cast<int64_t>(inverted_now);  // the rest were complete already
  summary["lora_seconds_total"] = lora_seconds;                       // over every file, when it was made
  summary["rank_finish_seconds"] = finish;                            // this run
  summary["rank_hdf5_seconds"] = hdf5;
  fs::write_text(out / "index.json", index.dump(2) + "\n");
  fs::write_text(out / "summary.json", summary.dump(2) + "\n");
  double lo = 100, sum = 0;
  for (const auto& e : summary["loras"]) {
    lo = std::min(lo, e["teacher_accuracy"].get<double>());
    sum += e["teacher_accuracy"].get<double>();
  }
  const double fmax = *std::max_element(finish.begin(), finish.end());
  const double fmin = *std::min_element(finish.begin(), finish.end());
  LOG_INFO("invert", "pool " << cfg.out << ": " << jobs.size() << " LoRAs, " << by_class.size() << " real classes, "
                             << images << " images; teacher accuracy on own surrogates mean "
                             << log::fixed(sum / jobs.size(), 1) << "%, min " << log::fixed(lo, 1) << "%; "
                             << static_cast<int64_t>(inverted_now) << " inverted in this run (rank finish times "
                             << log::fixed(fmin, 1) << " .. " << log::fixed(fmax, 1)
                             << " s), the rest reused; inversion time of all files " << log::fixed(lora_seconds, 1)
                             << " s");
}

}  // namespace lorarec::invert
