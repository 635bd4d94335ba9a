#include "lorarecycle/data/surrogate_pool.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>
#include <thread>
#include <utility>
#include <vector>

#include "lorarecycle/data/zoo_manifest.h"
#include "lorarecycle/io/hdf5.h"
#include "lorarecycle/util/error.h"
#include "lorarecycle/util/fs.h"
#include "lorarecycle/util/provenance.h"

namespace lorarec::data {
namespace {
using json = nlohmann::json;
namespace stdfs = std::filesystem;
}  // namespace

std::string pool_file_name(int id) { return zoo_entry_name(id) + ".h5"; }

bool pool_file_complete(const std::string& path) {
  if (!stdfs::exists(path)) return false;
  try {
    const io::h5::File f = io::h5::File::open_read(path);
    if (!f.has_attr("/", "complete") || f.attr_double("/", "complete") != 1.0) return false;
    const int64_t n = f.shape("/images").at(0);
    // A file of an older layout (per-LoRA class slots in /global_class) is not complete: re-inverted.
    if (!f.has_attr("/", "pool_format") || f.attr_double("/", "pool_format") < kPoolFormat) return false;
    for (const char* d : kPoolDatasets)
      if (f.shape(d).at(0) != n) return false;
    return n > 0;
  } catch (const std::exception&) {
    return false;
  }
}

std::string pool_data_digest(const PoolArrays& a) {
  std::uint64_t h = prov::kHashSeed;
  const std::pair<const at::Tensor*, at::ScalarType> parts[] = {
      {&a.images, at::kByte},          {&a.labels, at::kInt},         {&a.global_class, at::kInt},
      {&a.teacher_logits, at::kFloat}, {&a.patch_scores, at::kFloat}, {&a.keep_mask, at::kByte}};
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
    PoolArrays a;
    at::Tensor* parts[] = {&a.images, &a.labels, &a.global_class, &a.teacher_logits, &a.patch_scores, &a.keep_mask};
    const at::ScalarType types[] = {at::kByte, at::kInt, at::kInt, at::kFloat, at::kFloat, at::kByte};
    for (int i = 0; i < 6; ++i) *parts[i] = f.read(kPoolDatasets[i], 0, -1, types[i]);
    now = pool_data_digest(a);
  } catch (const Error& e) {
    throw InputError(path + ": corrupt pool file (" + e.what() + "); delete it and re-run invert");
  }
  const std::string had = f.attr_string("/", "data_digest");
  if (now != had)
    throw InputError(path + ": corrupt pool file (its data digest is " + now + ", it was written as " + had +
                     "); delete it and re-run invert");
}

void write_pool_file(const std::string& path, const PoolArrays& a, int chunk_images,
                     const std::function<void(io::h5::File&)>& attributes) {
  io::h5::write_file_atomically(path, [&](io::h5::File& f) {
    f.write("/images", a.images, chunk_images);
    f.write("/labels", a.labels);
    f.write("/global_class", a.global_class);
    f.write("/teacher_logits", a.teacher_logits, chunk_images);
    f.write("/patch_scores", a.patch_scores, chunk_images);
    f.write("/keep_mask", a.keep_mask, chunk_images);
    attributes(f);
    f.set_attr("/", "data_digest", pool_data_digest(a));
    f.set_attr("/", "pool_format", int64_t{kPoolFormat});
    f.set_attr("/", "software", std::string("lorarecycle ") + LORAREC_VERSION);
    f.set_attr("/", "time", prov::now_iso());
    f.set_attr("/", "complete", int64_t{1});
  });
}

json write_pool_index(const std::string& dir, json header, const std::vector<PoolIndexEntry>& files,
                      const std::function<void(size_t, const io::h5::File&)>& each) {
  json& index = header;
  index["format"] = kPoolFormat;
  index["files"] = json::array();
  std::map<int64_t, std::pair<int64_t, std::vector<int>>> by_class;  // dataset class -> (images, LoRAs)
  int64_t images = 0;
  for (size_t i = 0; i < files.size(); ++i) {
    const PoolIndexEntry& e = files[i];
    const std::string path = (stdfs::path(dir) / e.file).string();
    if (!pool_file_complete(path)) throw RuntimeError(path + " is missing or incomplete");
    const io::h5::File f = io::h5::File::open_read(path);
    const int64_t n = f.shape("/images")[0];
    const int N = static_cast<int>(f.shape("/teacher_logits")[1]);
    images += n;
    index["files"].push_back(
        {{"file", e.file}, {"lora_id", e.lora_id}, {"images", n}, {"classes", N}, {"class_ids", e.class_ids}});
    for (int64_t c : e.class_ids) by_class[c].second.push_back(e.lora_id);
    const at::Tensor gc = f.read("/global_class", 0, -1, at::kInt).contiguous();
    const int32_t* g = gc.data_ptr<int32_t>();
    for (int64_t r = 0; r < n; ++r) ++by_class[g[r]].first;
    if (each) each(i, f);
  }
  index["images"] = images;
  index["classes"] = json::array();
  for (const auto& [c, e] : by_class)
    index["classes"].push_back({{"class", c}, {"images", e.first}, {"loras", e.second}});
  fs::write_text(stdfs::path(dir) / kPoolIndexFile, index.dump(2) + "\n");
  return index;
}

SurrogatePool::SurrogatePool(SurrogatePool&&) noexcept = default;
SurrogatePool& SurrogatePool::operator=(SurrogatePool&&) noexcept = default;
SurrogatePool::~SurrogatePool() = default;

namespace {

// index.json of a pool of today's format (InputError naming what is wrong).
json read_index(const std::string& dir) {
  const stdfs::path index_path = stdfs::path(dir) / kPoolIndexFile;
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
  if (!index.contains("format") || !index["format"].is_number() || index["format"].get<int>() < kPoolFormat)
    throw InputError(dir +
                     ": a pool of an older lorarecycle (classes numbered per LoRA, not by real class); re-run "
                     "`lorarecycle invert` with this --out to rebuild it");
  return index;
}

// One pool file's handle, checked: complete, intact, of today's format, images S x S x 3.
std::unique_ptr<io::h5::File> open_pool_file(const std::string& path, int image_size, int64_t* rows) {
  auto h = std::make_unique<io::h5::File>(io::h5::File::open_read(path));
  if (!h->has_attr("/", "complete") || h->attr_double("/", "complete") != 1.0)
    throw InputError(path + ": incomplete pool file (re-run `lorarecycle invert` to finish it)");
  check_pool_file_intact(path);  // a corrupt file is an error, never a wrong result
  const auto ishape = h->shape("/images");
  if (ishape.size() != 4 || ishape[1] != image_size || ishape[2] != image_size || ishape[3] != 3)
    throw InputError(path + ": /images must be [n, " + std::to_string(image_size) + ", " + std::to_string(image_size) +
                     ", 3] for this VFM");
  if (!h->has_attr("/", "pool_format") || h->attr_double("/", "pool_format") < kPoolFormat)
    throw InputError(path +
                     ": a pool file of an older lorarecycle (classes numbered per LoRA); re-run "
                     "`lorarecycle invert` with this --out to rebuild it");
  *rows = ishape[0];
  return h;
}

}  // namespace

// The file's labels: each local label's rows and dataset class; returns the class of each label.
std::vector<int64_t> SurrogatePool::read_labels(const io::h5::File& h, File& f, int64_t first_row) {
  const at::Tensor labels = h.read("/labels", 0, -1, at::kInt).to(at::kLong);
  const at::Tensor global = h.read("/global_class", 0, -1, at::kInt).to(at::kLong);
  if (labels.size(0) != f.rows || global.size(0) != f.rows)
    throw InputError(f.path + ": /labels or /global_class do not match /images");
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
    f.local_rows[lp[i]].push_back(first_row + i);
  }
  return local_global;
}

SurrogatePool SurrogatePool::open(const std::string& dir, int image_size, int num_patches, int64_t cache_bytes) {
  const json index = read_index(dir);
  std::map<int64_t, int> class_index;  // dataset class id -> index into classes_
  SurrogatePool pool;
  int64_t row = 0;
  std::vector<at::Tensor> scores;
  for (const auto& entry : index["files"]) {
    File f;
    try {
      f.path = (stdfs::path(dir) / entry.at("file").get<std::string>()).string();
      f.lora_id = entry.at("lora_id").get<int>();
    } catch (const json::exception& e) {
      throw InputError((stdfs::path(dir) / kPoolIndexFile).string() + ": malformed file entry: " + e.what());
    }
    auto h = open_pool_file(f.path, image_size, &f.rows);
    f.first_row = row;
    if (h->has_attr("/", "lora_path")) f.lora_path = h->attr_string("/", "lora_path");
    const at::Tensor logits = h->read("/teacher_logits", 0, -1, at::kFloat);
    const at::Tensor sc = h->read("/patch_scores", 0, -1, at::kFloat);
    if (logits.dim() != 2 || logits.size(0) != f.rows || sc.dim() != 2 || sc.size(0) != f.rows ||
        sc.size(1) != num_patches)
      throw InputError(f.path + ": /labels, /global_class, /teacher_logits or /patch_scores do not match /images (" +
                       std::to_string(num_patches) + " patches expected)");
    f.num_classes = static_cast<int>(logits.size(1));
    const std::vector<int64_t> local_global = read_labels(*h, f, row);
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
    pool.image_bytes_ += f.rows * image_size * image_size * 3;
    pool.handles_.push_back(std::move(h));
    pool.files_.push_back(std::move(f));
    row += pool.files_.back().rows;
  }
  pool.scores_ = at::cat(scores);
  if (pool.image_bytes_ <= cache_bytes) {
    std::vector<at::Tensor> images;
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

void SurrogatePool::images_into(const std::vector<int64_t>& rows, const std::vector<bool>& flip, at::Tensor& out,
                                int threads) {
  const int64_t n = static_cast<int64_t>(rows.size());
  if (flip.size() != rows.size() || out.scalar_type() != at::kByte || !out.is_contiguous() || out.dim() != 4 ||
      out.size(0) != n)
    throw InputError("images_into: out must be contiguous uint8 [" + std::to_string(n) +
                     ", S, S, C] with a flip per row");
  for (int64_t r : rows)
    if (r < 0 || r >= size()) throw InputError("images_into: row " + std::to_string(r) + " outside the pool");
  const at::Tensor src = images_.defined() ? images_ : images(rows);  // on demand: the rows in order
  if (out.size(1) != src.size(1) || out.size(2) != src.size(2) || out.size(3) != src.size(3))
    throw InputError("images_into: out's image shape differs from the pool's");
  const int64_t W = src.size(2), C = src.size(3), row_bytes = W * C, image_bytes = src.size(1) * row_bytes;
  const uint8_t* base = src.data_ptr<uint8_t>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  auto copy = [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const uint8_t* s = base + (images_.defined() ? rows[i] : i) * image_bytes;
      uint8_t* d = dst + i * image_bytes;
      if (!flip[i]) {
        std::memcpy(d, s, static_cast<size_t>(image_bytes));
        continue;
      }
      for (int64_t y = 0; y < src.size(1); ++y)  // a row's pixels in reverse order, channels kept
        for (int64_t x = 0; x < W; ++x)
          std::memcpy(d + y * row_bytes + x * C, s + y * row_bytes + (W - 1 - x) * C, static_cast<size_t>(C));
    }
  };
  const int t = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, n)));
  std::vector<std::thread> pool;
  try {
    for (int k = 1; k < t; ++k) pool.emplace_back(copy, n * k / t, n * (k + 1) / t);
  } catch (...) {  // a thread that could not start: join the others before the error leaves
    for (auto& th : pool) th.join();
    throw;
  }
  copy(0, n / t);
  for (auto& th : pool) th.join();
}

}  // namespace lorarec::data
