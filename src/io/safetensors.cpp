#include "lorarecycle/io/safetensors.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <nlohmann/json.hpp>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <mutex>
#include <set>
#include <tuple>

#include "lorarecycle/util/error.h"
#include "lorarecycle/util/fs.h"
#include "lorarecycle/util/provenance.h"

namespace lorarec::io {
namespace stdfs = std::filesystem;
namespace {

using json = nlohmann::json;

struct DTypeEntry {
  DType dtype;
  const char* name;
  std::size_t size;
  at::ScalarType scalar;
};

constexpr DTypeEntry kDTypes[] = {
    {DType::kF64, "F64", 8, at::kDouble},     {DType::kF32, "F32", 4, at::kFloat}, {DType::kF16, "F16", 2, at::kHalf},
    {DType::kBF16, "BF16", 2, at::kBFloat16}, {DType::kI64, "I64", 8, at::kLong},  {DType::kI32, "I32", 4, at::kInt},
    {DType::kI16, "I16", 2, at::kShort},      {DType::kI8, "I8", 1, at::kChar},    {DType::kU8, "U8", 1, at::kByte},
    {DType::kBool, "BOOL", 1, at::kBool},
};

const DTypeEntry& entry(DType d) {
  for (const auto& e : kDTypes)
    if (e.dtype == d) return e;
  throw RuntimeError("unknown DType");
}

// Integrity digest: the tensor index (names, dtypes, shapes, offsets) and the metadata other than
// the digest itself, then each tensor's bytes in name order (the data section's order).
std::uint64_t index_hash(const std::map<std::string, TensorInfo>& tensors,
                         const std::map<std::string, std::string>& meta) {
  std::string canon;
  for (const auto& [name, t] : tensors) {
    canon += name + '\x1f' + std::to_string(static_cast<int>(t.dtype)) + '\x1f';
    for (auto d : t.shape) canon += std::to_string(d) + ',';
    canon += '\x1f' + std::to_string(t.begin) + '\x1f' + std::to_string(t.end) + '\x1e';
  }
  for (const auto& [key, value] : meta)
    if (key != kDigestKey) canon += key + '\x1f' + value + '\x1e';
  return prov::hash_bytes(canon.data(), canon.size());
}

InputError bad(const std::string& origin, const std::string& what) {
  return InputError(origin + ": invalid safetensors: " + what);
}

// Parses JSON refusing duplicate keys at any depth.
json parse_strict_json(const std::string& text, const std::string& origin) {
  std::vector<std::set<std::string>> seen;
  std::string duplicate;
  auto callback = [&](int /*depth*/, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
        seen.emplace_back();
        break;
      case json::parse_event_t::object_end:
        if (!seen.empty()) seen.pop_back();
        break;
      case json::parse_event_t::key:
        if (!seen.empty() && !seen.back().insert(parsed.get<std::string>()).second && duplicate.empty())
          duplicate = parsed.get<std::string>();
        break;
      default:
        break;
    }
    return true;
  };
  json j;
  try {
    j = json::parse(text, callback);
  } catch (const json::exception& e) {
    throw bad(origin, std::string("header is not valid JSON (") + e.what() + ")");
  }
  if (!duplicate.empty()) throw bad(origin, "duplicate key '" + duplicate + "' in header");
  return j;
}

std::uint64_t to_offset(const json& v, const std::string& origin, const std::string& name) {
  if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<std::int64_t>() >= 0))
    throw bad(origin, "tensor '" + name + "': data_offsets must be non-negative integers");
  return v.get<std::uint64_t>();
}

// One tensor's header entry: dtype, shape and data offsets, checked against the data section.
TensorInfo parse_tensor_entry(const json& v, const std::string& name, std::uint64_t data_size,
                              const std::string& origin) {
  if (!v.is_object()) throw bad(origin, "tensor '" + name + "' is not an object");
  for (const auto& [field, _] : v.items())
    if (field != "dtype" && field != "shape" && field != "data_offsets")
      throw bad(origin, "tensor '" + name + "' has unknown field '" + field + "'");
  if (!v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets"))
    throw bad(origin, "tensor '" + name + "' lacks dtype, shape or data_offsets");
  TensorInfo t;
  const json& dt = v.at("dtype");
  if (!dt.is_string()) throw bad(origin, "tensor '" + name + "': dtype is not a string");
  bool found = false;
  for (const auto& e : kDTypes)
    if (dt.get<std::string>() == e.name) {
      t.dtype = e.dtype;
      found = true;
    }
  if (!found) throw bad(origin, "tensor '" + name + "': unknown dtype '" + dt.get<std::string>() + "'");
  const json& shape = v.at("shape");
  if (!shape.is_array()) throw bad(origin, "tensor '" + name + "': shape is not an array");
  std::uint64_t numel = 1;
  bool overflow = false;
  for (const auto& d : shape) {
    if (!d.is_number_integer() || d.get<std::int64_t>() < 0)
      throw bad(origin, "tensor '" + name + "': shape entries must be non-negative integers");
    const auto dim = d.get<std::uint64_t>();
    if (dim != 0 && numel > std::numeric_limits<std::uint64_t>::max() / dim) overflow = true;
    numel *= dim;
    t.shape.push_back(static_cast<std::int64_t>(dim));
  }
  const json& off = v.at("data_offsets");
  if (!off.is_array() || off.size() != 2) throw bad(origin, "tensor '" + name + "': data_offsets must be [begin, end]");
  t.begin = to_offset(off[0], origin, name);
  t.end = to_offset(off[1], origin, name);
  if (t.begin > t.end) throw bad(origin, "tensor '" + name + "': data_offsets begin > end");
  if (t.end > data_size)
    throw bad(origin, "tensor '" + name + "': data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
                          "] outside the data section of " + std::to_string(data_size) + " bytes");
  const std::size_t es = dtype_size(t.dtype);
  if (overflow || numel > std::numeric_limits<std::uint64_t>::max() / es || numel * es != t.end - t.begin)
    throw bad(origin, "tensor '" + name + "': " + std::to_string(t.end - t.begin) + " bytes do not match shape x " +
                          dtype_name(t.dtype) + " size");
  return t;
}

}  // namespace

const char* dtype_name(DType d) { return entry(d).name; }
std::size_t dtype_size(DType d) { return entry(d).size; }

SafetensorsIndex parse_safetensors_index(const std::uint8_t* data, std::size_t size, const std::string& origin) {
  if (size < 8) throw bad(origin, "file is " + std::to_string(size) + " bytes, shorter than the 8-byte header length");
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | data[i];  // little endian
  if (n > kMaxHeaderBytes)
    throw bad(origin,
              "header length " + std::to_string(n) + " exceeds the limit of " + std::to_string(kMaxHeaderBytes));
  if (n > size - 8)
    throw bad(origin, "header length " + std::to_string(n) + " runs past the end of the file (" + std::to_string(size) +
                          " bytes)");
  if (n < 2) throw bad(origin, "header of " + std::to_string(n) + " bytes cannot hold a JSON object");
  const std::string text(reinterpret_cast<const char*>(data) + 8, n);
  const json header = parse_strict_json(text, origin);
  if (!header.is_object()) throw bad(origin, "header is not a JSON object");

  SafetensorsIndex index;
  index.header_bytes = n;
  const std::uint64_t data_size = size - 8 - n;
  for (const auto& [name, v] : header.items()) {
    if (name == "__metadata__") {
      if (!v.is_object()) throw bad(origin, "__metadata__ is not an object");
      for (const auto& [mk, mv] : v.items()) {
        if (!mv.is_string()) throw bad(origin, "__metadata__ value of '" + mk + "' is not a string");
        index.metadata[mk] = mv.get<std::string>();
      }
      continue;
    }
    index.tensors.emplace(name, parse_tensor_entry(v, name, data_size, origin));
  }
  // Tensors must tile the data section exactly: no overlap, no hole, no trailing bytes.
  std::vector<std::pair<std::uint64_t, const std::string*>> spans;
  for (const auto& [name, t] : index.tensors)
    if (t.end > t.begin) spans.emplace_back(t.begin, &name);
  std::sort(spans.begin(), spans.end());
  std::uint64_t cursor = 0;
  for (const auto& [begin, name] : spans) {
    const TensorInfo& t = index.tensors.at(*name);
    if (begin < cursor) throw bad(origin, "tensor '" + *name + "' overlaps another tensor");
    if (begin > cursor)
      throw bad(origin, "hole of " + std::to_string(begin - cursor) + " bytes before tensor '" + *name + "'");
    cursor = t.end;
  }
  if (cursor != data_size)
    throw bad(origin, std::to_string(data_size - cursor) + " trailing bytes after the last tensor");
  return index;
}

struct SafetensorsFile::Mapping {
  void* addr = nullptr;
  std::size_t size = 0;
  Mapping() = default;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() {
    if (addr != nullptr && addr != MAP_FAILED) ::munmap(addr, size);
  }
};

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  SafetensorsFile f;
  f.path_ = path;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw InputError(path + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw InputError(path + ": cannot stat: " + std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw InputError(path + ": not a regular file");
  }
  auto mapping = std::make_shared<Mapping>();
  mapping->size = static_cast<std::size_t>(st.st_size);
  if (mapping->size > 0) {
    mapping->addr = ::mmap(nullptr, mapping->size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (mapping->addr == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      throw InputError(path + ": cannot map: " + std::strerror(err));
    }
  }
  ::close(fd);
  static const std::uint8_t kEmpty = 0;
  const auto* bytes = mapping->size ? static_cast<const std::uint8_t*>(mapping->addr) : &kEmpty;
  f.index_ = parse_safetensors_index(bytes, mapping->size, path);
  const auto it = f.index_.metadata.find(kDigestKey);
  if (it != f.index_.metadata.end()) {  // written here: verify the whole content
    std::uint64_t h = index_hash(f.index_.tensors, f.index_.metadata);
    const std::uint8_t* data = bytes + 8 + f.index_.header_bytes;
    for (const auto& [name, t] : f.index_.tensors) h = prov::hash_bytes(data + t.begin, t.end - t.begin, h);
    if (prov::hex(h) != it->second)
      throw InputError(path + ": corrupt file: its content digest is " + prov::hex(h) + ", it was written as " +
                       it->second + " (a changed or damaged byte); restore or re-create it");
  }
  f.mapping_ = std::move(mapping);
  return f;
}

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = index_.tensors.find(name);
  if (it == index_.tensors.end()) throw InputError(path_ + ": missing tensor '" + name + "'");
  return it->second;
}

at::Tensor SafetensorsFile::tensor(const std::string& name) const {
  const TensorInfo& t = info(name);
  const DTypeEntry& e = entry(t.dtype);
  const auto options = at::TensorOptions().dtype(e.scalar).device(at::kCPU);
  if (t.end == t.begin) return at::empty(t.shape, options);
  auto* ptr = static_cast<std::uint8_t*>(mapping_->addr) + 8 + index_.header_bytes + t.begin;
  if (reinterpret_cast<std::uintptr_t>(ptr) % e.size == 0) {
    auto keep = mapping_;
    return at::from_blob(
        ptr, t.shape, [keep](void*) mutable { keep.reset(); }, options);
  }
  at::Tensor out = at::empty(t.shape, options);  // unaligned: one copy
  std::memcpy(out.data_ptr(), ptr, t.end - t.begin);
  return out;
}

std::map<std::string, at::Tensor> load_safetensors(const std::string& path) {
  const SafetensorsFile f = SafetensorsFile::open(path);
  std::map<std::string, at::Tensor> out;
  for (const auto& [name, _] : f.tensors()) out.emplace(name, f.tensor(name));
  return out;
}

void save_safetensors(const std::string& path, const std::map<std::string, at::Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  std::vector<at::Tensor> ordered;
  std::map<std::string, TensorInfo> index;
  std::uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (name == "__metadata__") throw InputError(path + ": tensor name '__metadata__' is reserved");
    const DTypeEntry* e = nullptr;
    for (const auto& cand : kDTypes)
      if (cand.scalar == t.scalar_type()) e = &cand;
    if (e == nullptr)
      throw InputError(path + ": tensor '" + name + "' has dtype " + std::string(c10::toString(t.scalar_type())) +
                       " that safetensors export does not support");
    at::Tensor c = t.detach().to(at::kCPU).contiguous();
    const std::uint64_t bytes = static_cast<std::uint64_t>(c.numel()) * e->size;
    header[name] = {{"dtype", e->name}, {"shape", c.sizes().vec()}, {"data_offsets", {offset, offset + bytes}}};
    index[name] = TensorInfo{e->dtype, c.sizes().vec(), offset, offset + bytes};
    offset += bytes;
    ordered.push_back(c);
  }
  std::map<std::string, std::string> meta = metadata;
  std::uint64_t h = index_hash(index, meta);
  for (const auto& c : ordered)
    h = prov::hash_bytes(c.data_ptr(), static_cast<std::size_t>(c.numel() * c.element_size()), h);
  meta[kDigestKey] = prov::hex(h);
  header["__metadata__"] = meta;
  std::string text = header.dump();
  while (text.size() % 8 != 0) text.push_back(' ');
  fs::write_atomically(path, [&](const fs::stdfs::path& tmp) {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) fs::throw_write_error(tmp);
    std::uint8_t len[8];
    std::uint64_t n = text.size();
    for (int i = 0; i < 8; ++i) len[i] = static_cast<std::uint8_t>((n >> (8 * i)) & 0xff);
    out.write(reinterpret_cast<const char*>(len), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const auto& c : ordered)
      out.write(static_cast<const char*>(c.data_ptr()), static_cast<std::streamsize>(c.numel() * c.element_size()));
    out.flush();
    if (!out) fs::throw_write_error(tmp);
  });
}

std::string checked_model_digest(const std::string& path) {
  // Each file is verified once per process while its size and mtime stay (eval checks the VFM
  // once per zoo LoRA).
  static std::mutex mu;
  static std::set<std::tuple<std::string, std::uintmax_t, std::int64_t>> verified;
  const auto verify = [](const stdfs::path& f) {
    std::error_code ec;
    const auto key =
        std::make_tuple(stdfs::absolute(f, ec).string(), stdfs::file_size(f, ec),
                        static_cast<std::int64_t>(stdfs::last_write_time(f, ec).time_since_epoch().count()));
    {
      std::lock_guard<std::mutex> lock(mu);
      if (verified.count(key) > 0) return;
    }
    (void)SafetensorsFile::open(f.string());
    std::lock_guard<std::mutex> lock(mu);
    verified.insert(key);
  };
  std::error_code ec;
  if (stdfs::is_directory(path, ec)) {
    for (const auto& e : stdfs::directory_iterator(path))
      if (e.is_regular_file() && e.path().extension() == ".safetensors") verify(e.path());
  } else if (stdfs::path(path).extension() == ".safetensors" && stdfs::exists(path, ec)) {
    verify(path);
  }
  return prov::model_digest(path);
}

}  // namespace lorarec::io
