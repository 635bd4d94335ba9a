// RAII wrappers over the HDF5 C API (serial HDF5). Every call is checked: a failure throws
// (InputError for files a user gave us, RuntimeError when writing) with the call, the file and
// HDF5's own error stack in one line.
//
// Datasets map to tensors: uint8 <-> kByte, int32 <-> kInt, int64 <-> kLong, float32 <-> kFloat,
// float64 <-> kDouble. Strings are variable-length UTF-8.
#pragma once

#include <ATen/core/Tensor.h>
#include <hdf5.h>

#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

namespace lorarec::io::h5 {

// An owned hid_t with its close function. Copy deleted, move allowed (STYLE 6).
class Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  Handle() = default;
  Handle(hid_t id, Closer close) : id_(id), close_(close) {}
  ~Handle() { reset(); }
  Handle(Handle&& o) noexcept : id_(o.id_), close_(o.close_) { o.id_ = H5I_INVALID_HID; }
  Handle& operator=(Handle&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = o.id_;
      close_ = o.close_;
      o.id_ = H5I_INVALID_HID;
    }
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  hid_t get() const { return id_; }
  // Gives up ownership without closing.
  hid_t release() {
    const hid_t id = id_;
    id_ = H5I_INVALID_HID;
    return id;
  }
  void reset();

 private:
  hid_t id_ = H5I_INVALID_HID;
  Closer close_ = nullptr;
};

class File {
 public:
  // Opens an existing file read-only. InputError naming the file when it is not HDF5.
  static File open_read(const std::string& path);

  const std::string& path() const { return path_; }
  hid_t id() const { return handle_.get(); }
  bool has(const std::string& dataset) const;
  // Shape of a dataset; InputError when missing.
  std::vector<int64_t> shape(const std::string& dataset) const;
  // Rows [start, start + count) along dim 0 (count < 0: to the end). The dtype must be one of
  // the supported ones; `expect` (when not Undefined) must match.
  at::Tensor read(const std::string& dataset, int64_t start = 0, int64_t count = -1,
                  at::ScalarType expect = at::ScalarType::Undefined) const;
  std::vector<std::string> read_strings(const std::string& dataset) const;
  // Writes a whole dataset from a CPU tensor; chunk_rows > 0 chunks along dim 0 (and compresses
  // with gzip level `gzip` when > 0).
  void write(const std::string& dataset, const at::Tensor& tensor, int64_t chunk_rows = 0, int gzip = 0);
  void write_strings(const std::string& dataset, const std::vector<std::string>& values);
  // Attributes on the root group ("/") or a dataset.
  void set_attr(const std::string& object, const std::string& name, const std::string& value);
  void set_attr(const std::string& object, const std::string& name, double value);
  void set_attr(const std::string& object, const std::string& name, int64_t value);
  bool has_attr(const std::string& object, const std::string& name) const;
  std::string attr_string(const std::string& object, const std::string& name) const;
  double attr_double(const std::string& object, const std::string& name) const;
  // Flushes and closes (errors surface here rather than in a destructor).
  void close();

 private:
  friend void write_file_atomically_impl(const std::string& path, void (*fill)(File&, void*), void* ctx);
  std::string path_;
  Handle handle_;
  bool writable_ = false;
};

// Builds the file in memory (fill(file)), then writes it under a temporary name and renames it
// into place: a failed write is a fs::WriteError naming `path`, the previous file stays.
template <typename Fill>
void write_file_atomically(const std::string& path, Fill&& fill);

// Internal: the atomic write, type-erased.
void write_file_atomically_impl(const std::string& path, void (*fill)(File&, void*), void* ctx);

template <typename Fill>
void write_file_atomically(const std::string& path, Fill&& fill) {
  write_file_atomically_impl(
      path, [](File& f, void* ctx) { (*static_cast<std::remove_reference_t<Fill>*>(ctx))(f); },
      const_cast<void*>(static_cast<const void*>(&fill)));
}

}  // namespace lorarec::io::h5
