// safetensors (https://huggingface.co/docs/safetensors) reader and writer, strict.
//
// Layout: u64 little-endian header length N, N bytes of JSON header, then the data section.
// The header maps tensor names to {"dtype", "shape", "data_offsets": [begin, end]} (offsets
// relative to the data section) plus an optional "__metadata__" string->string map.
//
// The reader refuses: a file shorter than 8 bytes, a header length above kMaxHeaderBytes or past
// the end of the file, invalid JSON, a header that is not an object, duplicate keys, unknown
// dtypes, bad shapes, offsets outside the data section, overlapping or non-contiguous tensors,
// trailing bytes, and byte sizes that differ from shape x dtype size. Every refusal is an
// InputError whose one-line message starts with the file name.
//
// Reading maps the file (MAP_PRIVATE, copy-on-write) and returns tensors that view the mapping:
// no copy at all when the data is aligned, one copy otherwise. The mapping stays alive as long
// as any tensor viewing it does.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace lorarec::io {

inline constexpr std::uint64_t kMaxHeaderBytes = 100ull << 20;  // 100 MiB, as the reference implementation

enum class DType { kF64, kF32, kF16, kBF16, kI64, kI32, kI16, kI8, kU8, kBool };

const char* dtype_name(DType dtype);
std::size_t dtype_size(DType dtype);

struct TensorInfo {
  DType dtype = DType::kF32;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0;  // byte offset in the data section
  std::uint64_t end = 0;    // one past the last byte
};

// The validated header of a safetensors buffer.
struct SafetensorsIndex {
  std::uint64_t header_bytes = 0;  // N
  std::map<std::string, TensorInfo> tensors;
  std::map<std::string, std::string> metadata;
};

// Validates a whole safetensors buffer (header + data) of `size` bytes. `origin` names the
// source in error messages. Throws InputError. Safe on arbitrary bytes (fuzzed).
SafetensorsIndex parse_safetensors_index(const std::uint8_t* data, std::size_t size, const std::string& origin);

// A read-only view of a safetensors file. Cheap to copy (shares the mapping).
class SafetensorsFile {
 public:
  // Maps and validates the file. Throws InputError.
  static SafetensorsFile open(const std::string& path);

  const std::string& path() const { return path_; }
  const std::map<std::string, std::string>& metadata() const { return index_.metadata; }
  const std::map<std::string, TensorInfo>& tensors() const { return index_.tensors; }
  bool contains(const std::string& name) const { return index_.tensors.count(name) != 0; }
  // Throws InputError naming the file when the name is absent.
  const TensorInfo& info(const std::string& name) const;
  // A CPU tensor of the stored dtype and shape that views the mapping (see above).
  at::Tensor tensor(const std::string& name) const;

 private:
  struct Mapping;
  std::string path_;
  std::shared_ptr<Mapping> mapping_;
  SafetensorsIndex index_;
};

// Loads every tensor of a file.
std::map<std::string, at::Tensor> load_safetensors(const std::string& path);

// Metadata key of the integrity digest that save_safetensors adds: a 64-bit hash of the tensor
// index, the other metadata and every tensor's bytes. SafetensorsFile::open verifies it when
// present (files from elsewhere have none) and refuses a file whose content does not match.
inline constexpr const char* kDigestKey = "lorarecycle_digest";

// prov::model_digest of a model (a directory or one file) after opening each of its safetensors
// files, which verifies their content digests: a corrupt model is reported as a corrupt file
// (InputError naming it), never as "another model" by a digest that differs.
std::string checked_model_digest(const std::string& path);

// Writes tensors (any device; moved to CPU, made contiguous) atomically to `path`.
// Supported dtypes: those of DType. Throws InputError for an unsupported dtype.
void save_safetensors(const std::string& path, const std::map<std::string, at::Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace lorarec::io
