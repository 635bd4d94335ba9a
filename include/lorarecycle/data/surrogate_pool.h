// The surrogate pool between stages (DESIGN 2.4): written by `invert`, read by `metatrain` (the
// reader below), `verify` and data_tools/report.py. The one place that knows its layout.
//
// Pool layout (<pool>/):
//   lora_<kkk>.h5   one file per zoo LoRA, the datasets of kPoolDatasets:
//                   /images uint8 [n,S,S,3], /labels int32 [n] (local: the LoRA's head column),
//                   /global_class int32 [n] (the dataset class id of the zoo task's class),
//                   /teacher_logits float [n,N], /patch_scores float [n,P], /keep_mask uint8 [n,P];
//                   root attributes: the producer's (lora_id, lora_path (read by metatrain
//                   --distill-weight), seed, iterations, per_class, gray, flip, losses, teacher
//                   accuracy, settings, ...), then data_digest, pool_format, software, time and
//                   complete = 1. Written to a temporary name, renamed (write_pool_file).
//   index.json      format, every LoRA file with its dataset class ids and counts, and every real
//                   class with its image count and the LoRAs that cover it (write_pool_index).
//   summary.json    the producer's per-LoRA summary (invert: teacher accuracy, losses, seconds).
// Surrogates are pooled by real class: two LoRAs tuned on the same dataset class put their images
// under one class id, so an episode's support and query of a class may come from different
// teachers. Format 1 (earlier versions) numbered classes per LoRA (lora_id * N + label); such files
// count as incomplete (invert re-inverts them) and the reader refuses such a pool.
#pragma once

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace lorarec::io::h5 {
class File;
}

namespace lorarec::data {

// The pool layout's version (index.json "format", pool files' pool_format attribute).
inline constexpr int kPoolFormat = 2;
inline constexpr const char* kPoolIndexFile = "index.json";
inline constexpr const char* kPoolSummaryFile = "summary.json";
// A pool file's datasets, in the order of its data digest.
inline constexpr const char* kPoolDatasets[] = {"/images",         "/labels",       "/global_class",
                                                "/teacher_logits", "/patch_scores", "/keep_mask"};

// The arrays of one pool file (one LoRA's surrogates), types and shapes as in the layout above.
struct PoolArrays {
  at::Tensor images, labels, global_class, teacher_logits, patch_scores, keep_mask;
};

// Name of LoRA k's pool file: "lora_007.h5".
std::string pool_file_name(int id);
// True when the file is a complete, readable pool file of today's format with n > 0 images.
bool pool_file_complete(const std::string& path);
// Integrity: the content digest of the arrays (kPoolDatasets in order, in their stored types), as
// write_pool_file records it in the root attribute "data_digest". check_pool_file_intact re-reads
// the datasets and throws InputError naming the file when the digest differs (a flipped bit, a
// truncated dataset); files without the attribute (older versions) pass.
std::string pool_data_digest(const PoolArrays& a);
void check_pool_file_intact(const std::string& path);
// Writes a pool file atomically: the arrays (/images, /teacher_logits, /patch_scores and /keep_mask
// chunked by `chunk_images`), the producer's `attributes`, then data_digest, pool_format,
// software, time and complete = 1.
void write_pool_file(const std::string& path, const PoolArrays& a, int chunk_images,
                     const std::function<void(io::h5::File&)>& attributes);

// One LoRA's entry in index.json.
struct PoolIndexEntry {
  std::string file;  // pool_file_name(lora_id)
  int lora_id = 0;
  std::vector<int64_t> class_ids;  // dataset class of each head column
};
// Writes <dir>/index.json atomically over complete pool files: `header` (model, zoo, settings) with
// format, files (with their image and class counts), images and the real classes (image count and
// covering LoRAs). RuntimeError naming a file that is missing or incomplete. each(i, file), when
// given, sees every open file in the same pass (the producer's summary). Returns the index.
nlohmann::json write_pool_index(const std::string& dir, nlohmann::json header, const std::vector<PoolIndexEntry>& files,
                                const std::function<void(size_t, const io::h5::File&)>& each = {});

// The reader: every file of a pool, classes keyed by the dataset class id (/global_class), so a
// class holds the surrogates of every LoRA that covers it. Labels, teacher logits and patch scores
// are held in memory (small); images are cached in memory when they fit `cache_bytes`, else read
// from HDF5 row by row on demand. Not thread-safe: use from one thread.
class SurrogatePool {
 public:
  struct Class {
    int64_t id = 0;             // dataset class id
    std::vector<int64_t> rows;  // global rows, from every LoRA that covers the class
    int loras = 0;              // how many pool files (LoRAs) contribute
  };
  struct File {
    std::string path;
    int lora_id = 0;
    int num_classes = 0;  // N of its LoRA
    int64_t first_row = 0, rows = 0;
    std::vector<int> classes;                      // per local label (head column): index into classes()
    std::vector<std::vector<int64_t>> local_rows;  // per local label: global rows of this file
    std::string lora_path;                         // the inverted LoRA's directory (pool attribute), "" if absent
  };

  // Reads <dir>/index.json and every file it lists; checks the format (a pool with per-LoRA class
  // slots, written before classes were pooled by real class, is refused: re-run invert),
  // completeness, integrity, shapes and that the images are image_size x image_size x 3
  // (InputError naming the file). Keeps every image in memory when they fit in cache_bytes, else
  // reads them on demand.
  static SurrogatePool open(const std::string& dir, int image_size, int num_patches, int64_t cache_bytes);
  SurrogatePool(SurrogatePool&&) noexcept;
  SurrogatePool& operator=(SurrogatePool&&) noexcept;
  ~SurrogatePool();

  const std::vector<Class>& classes() const { return classes_; }
  const std::vector<File>& files() const { return files_; }
  int64_t size() const { return static_cast<int64_t>(row_file_.size()); }
  bool cached() const { return images_.defined(); }
  int64_t image_bytes() const { return image_bytes_; }
  // uint8 [n, S, S, 3] of the given global rows.
  at::Tensor images(const std::vector<int64_t>& rows);
  // The same images written into `out` (uint8 [rows.size(), S, S, 3], contiguous: e.g. page-locked
  // memory a GPU step copies from), image i mirrored left-right where flip[i], in one pass over
  // the bytes shared out over `threads` threads (cached pools; on-demand reads come in first).
  void images_into(const std::vector<int64_t>& rows, const std::vector<bool>& flip, at::Tensor& out, int threads);
  const at::Tensor& patch_scores() const { return scores_; }                  // float [rows, P]
  const at::Tensor& teacher_logits(int file) const { return logits_[file]; }  // float [rows of file, N]

 private:
  SurrogatePool() = default;
  static std::vector<int64_t> read_labels(const io::h5::File& h, File& f, int64_t first_row);
  std::vector<File> files_;
  std::vector<Class> classes_;
  std::vector<int> row_file_;
  std::vector<std::unique_ptr<io::h5::File>> handles_;
  std::vector<at::Tensor> logits_;
  at::Tensor images_, scores_;
  int64_t image_bytes_ = 0;
};

}  // namespace lorarec::data
