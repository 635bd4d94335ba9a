#include "lorarecycle/io/hdf5.h"

#include <ATen/ATen.h>

#include <filesystem>
#include <fstream>
#include <vector>

#include "lorarecycle/util/error.h"
#include "lorarecycle/util/fs.h"

namespace lorarec::io::h5 {
namespace {

// Silences HDF5's own printing once; errors are collected from the stack instead.
struct Quiet {
  Quiet() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }
};
const Quiet kQuiet;

herr_t collect(unsigned n, const H5E_error2_t* err, void* data) {
  auto* out = static_cast<std::string*>(data);
  if (err->desc != nullptr && *err->desc) {
    if (!out->empty()) *out += "; ";
    *out += err->desc;
  }
  return n < 3 ? 0 : 1;  // the innermost few messages are enough
}

std::string error_stack() {
  std::string msg;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, collect, &msg);
  H5Eclear2(H5E_DEFAULT);
  return msg.empty() ? "no HDF5 error message" : msg;
}

template <typename E>
[[noreturn]] void fail(const std::string& path, const char* call, const std::string& what) {
  throw E(path + ": HDF5 " + call + " failed" + (what.empty() ? "" : " for '" + what + "'") + ": " + error_stack());
}

hid_t native_type(at::ScalarType t) {
  switch (t) {
    case at::kByte:
      return H5T_NATIVE_UINT8;
    case at::kChar:
      return H5T_NATIVE_INT8;
    case at::kInt:
      return H5T_NATIVE_INT32;
    case at::kLong:
      return H5T_NATIVE_INT64;
    case at::kFloat:
      return H5T_NATIVE_FLOAT;
    case at::kDouble:
      return H5T_NATIVE_DOUBLE;
    case at::kBool:
      return H5T_NATIVE_UINT8;
    default:
      throw InputError(std::string("HDF5: unsupported tensor dtype ") + c10::toString(t));
  }
}

at::ScalarType scalar_of(hid_t type, const std::string& path, const std::string& name) {
  const H5T_class_t cls = H5Tget_class(type);
  const size_t size = H5Tget_size(type);
  if (cls == H5T_INTEGER) {
    const bool sign = H5Tget_sign(type) == H5T_SGN_2;
    if (size == 1) return sign ? at::kChar : at::kByte;
    if (size == 4 && sign) return at::kInt;
    if (size == 8 && sign) return at::kLong;
  } else if (cls == H5T_FLOAT) {
    if (size == 4) return at::kFloat;
    if (size == 8) return at::kDouble;
  }
  throw InputError(path + ": dataset '" + name + "' has an unsupported element type (class " + std::to_string(cls) +
                   ", " + std::to_string(size) + " bytes)");
}

Handle open_object(const File& f, const std::string& object) {
  const hid_t id = H5Oopen(f.id(), object.c_str(), H5P_DEFAULT);
  if (id < 0) fail<InputError>(f.path(), "H5Oopen", object);
  return Handle(id, H5Oclose);
}

}  // namespace

void Handle::reset() {
  if (id_ >= 0 && close_ != nullptr) close_(id_);
  id_ = H5I_INVALID_HID;
}

File File::open_read(const std::string& path) {
  if (!std::filesystem::exists(path)) throw InputError(path + ": no such file");
  if (H5Fis_hdf5(path.c_str()) <= 0) throw InputError(path + ": not an HDF5 file (or unreadable)");
  File f;
  f.path_ = path;
  const hid_t id = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (id < 0) fail<InputError>(path, "H5Fopen", "");
  f.handle_ = Handle(id, H5Fclose);
  return f;
}

bool File::has(const std::string& dataset) const {
  std::string partial;
  // Check every path component so that "a/b" does not fail inside H5Lexists.
  size_t pos = 0;
  while (true) {
    pos = dataset.find('/', pos + 1);
    partial = dataset.substr(0, pos);
    if (!partial.empty() && partial != "/") {
      const htri_t e = H5Lexists(id(), partial.c_str(), H5P_DEFAULT);
      if (e <= 0) {
        H5Eclear2(H5E_DEFAULT);
        return false;
      }
    }
    if (pos == std::string::npos) return true;
  }
}

std::vector<int64_t> File::shape(const std::string& name) const {
  if (!has(name)) throw InputError(path_ + ": missing dataset '" + name + "'");
  const hid_t ds = H5Dopen2(id(), name.c_str(), H5P_DEFAULT);
  if (ds < 0) fail<InputError>(path_, "H5Dopen2", name);
  Handle dset(ds, H5Dclose);
  Handle space(H5Dget_space(ds), H5Sclose);
  if (space.get() < 0) fail<InputError>(path_, "H5Dget_space", name);
  const int rank = H5Sget_simple_extent_ndims(space.get());
  if (rank < 0) fail<InputError>(path_, "H5Sget_simple_extent_ndims", name);
  std::vector<hsize_t> dims(rank);
  H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  return std::vector<int64_t>(dims.begin(), dims.end());
}

at::Tensor File::read(const std::string& name, int64_t start, int64_t count, at::ScalarType expect) const {
  const std::vector<int64_t> dims = shape(name);
  Handle dset(H5Dopen2(id(), name.c_str(), H5P_DEFAULT), H5Dclose);
  if (dset.get() < 0) fail<InputError>(path_, "H5Dopen2", name);
  Handle type(H5Dget_type(dset.get()), H5Tclose);
  if (type.get() < 0) fail<InputError>(path_, "H5Dget_type", name);
  const at::ScalarType st = scalar_of(type.get(), path_, name);
  if (expect != at::ScalarType::Undefined && st != expect)
    throw InputError(path_ + ": dataset '" + name + "' has dtype " + c10::toString(st) + ", expected " +
                     c10::toString(expect));
  std::vector<int64_t> out_shape = dims;
  Handle file_space(H5Dget_space(dset.get()), H5Sclose);
  Handle mem_space;
  if (!dims.empty()) {
    if (count < 0) count = dims[0] - start;
    if (start < 0 || count < 0 || start + count > dims[0])
      throw InputError(path_ + ": rows [" + std::to_string(start) + ", " + std::to_string(start + count) +
                       ") outside dataset '" + name + "' of " + std::to_string(dims[0]) + " rows");
    out_shape[0] = count;
    std::vector<hsize_t> off(dims.size(), 0), cnt(dims.begin(), dims.end());
    off[0] = static_cast<hsize_t>(start);
    cnt[0] = static_cast<hsize_t>(count);
    if (H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, off.data(), nullptr, cnt.data(), nullptr) < 0)
      fail<InputError>(path_, "H5Sselect_hyperslab", name);
    mem_space = Handle(H5Screate_simple(static_cast<int>(cnt.size()), cnt.data(), nullptr), H5Sclose);
  } else {
    mem_space = Handle(H5Screate(H5S_SCALAR), H5Sclose);
  }
  at::Tensor out = at::empty(out_shape, at::TensorOptions().dtype(st));
  if (out.numel() == 0) return out;
  if (H5Dread(dset.get(), native_type(st), mem_space.get(), file_space.get(), H5P_DEFAULT, out.data_ptr()) < 0)
    fail<InputError>(path_, "H5Dread", name);
  return out;
}

std::vector<std::string> File::read_strings(const std::string& name) const {
  const std::vector<int64_t> dims = shape(name);
  if (dims.size() != 1) throw InputError(path_ + ": dataset '" + name + "' must be a 1-D array of strings");
  Handle dset(H5Dopen2(id(), name.c_str(), H5P_DEFAULT), H5Dclose);
  Handle ftype(H5Dget_type(dset.get()), H5Tclose);
  if (H5Tget_class(ftype.get()) != H5T_STRING)
    throw InputError(path_ + ": dataset '" + name + "' does not hold strings");
  std::vector<std::string> out;
  if (H5Tis_variable_str(ftype.get()) > 0) {
    Handle mtype(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(mtype.get(), H5T_VARIABLE);
    H5Tset_cset(mtype.get(), H5Tget_cset(ftype.get()));
    std::vector<char*> buf(dims[0], nullptr);
    if (!buf.empty() && H5Dread(dset.get(), mtype.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, buf.data()) < 0)
      fail<InputError>(path_, "H5Dread", name);
    for (char* s : buf) out.emplace_back(s ? s : "");
    Handle space(H5Dget_space(dset.get()), H5Sclose);
    if (!buf.empty()) H5Dvlen_reclaim(mtype.get(), space.get(), H5P_DEFAULT, buf.data());
  } else {
    const size_t len = H5Tget_size(ftype.get());
    std::vector<char> buf(len * dims[0]);
    if (!buf.empty() && H5Dread(dset.get(), ftype.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, buf.data()) < 0)
      fail<InputError>(path_, "H5Dread", name);
    for (int64_t i = 0; i < dims[0]; ++i) {
      std::string s(buf.data() + i * len, len);
      s.erase(s.find_last_not_of('\0') + 1);
      out.push_back(s);
    }
  }
  return out;
}

void File::write(const std::string& name, const at::Tensor& tensor, int64_t chunk_rows, int gzip) {
  const at::Tensor t = tensor.detach().to(at::kCPU).contiguous();
  std::vector<hsize_t> dims(t.sizes().begin(), t.sizes().end());
  Handle space(
      dims.empty() ? H5Screate(H5S_SCALAR) : H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr),
      H5Sclose);
  Handle dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  if (chunk_rows > 0 && !dims.empty() && dims[0] > 0) {
    std::vector<hsize_t> chunk = dims;
    chunk[0] = std::min<hsize_t>(static_cast<hsize_t>(chunk_rows), dims[0]);
    if (H5Pset_chunk(dcpl.get(), static_cast<int>(chunk.size()), chunk.data()) < 0)
      fail<RuntimeError>(path_, "H5Pset_chunk", name);
    if (gzip > 0 && H5Pset_deflate(dcpl.get(), static_cast<unsigned>(gzip)) < 0)
      fail<RuntimeError>(path_, "H5Pset_deflate", name);
  }
  Handle lcpl(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
  H5Pset_create_intermediate_group(lcpl.get(), 1);
  const hid_t type = native_type(t.scalar_type());
  Handle dset(H5Dcreate2(id(), name.c_str(), type, space.get(), lcpl.get(), dcpl.get(), H5P_DEFAULT), H5Dclose);
  if (dset.get() < 0) fail<RuntimeError>(path_, "H5Dcreate2", name);
  if (t.numel() > 0 && H5Dwrite(dset.get(), type, H5S_ALL, H5S_ALL, H5P_DEFAULT, t.data_ptr()) < 0)
    fail<RuntimeError>(path_, "H5Dwrite", name);
}

void File::write_strings(const std::string& name, const std::vector<std::string>& values) {
  hsize_t n = values.size();
  Handle space(H5Screate_simple(1, &n, nullptr), H5Sclose);
  Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type.get(), H5T_VARIABLE);
  H5Tset_cset(type.get(), H5T_CSET_UTF8);
  Handle lcpl(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
  H5Pset_create_intermediate_group(lcpl.get(), 1);
  Handle dset(H5Dcreate2(id(), name.c_str(), type.get(), space.get(), lcpl.get(), H5P_DEFAULT, H5P_DEFAULT), H5Dclose);
  if (dset.get() < 0) fail<RuntimeError>(path_, "H5Dcreate2", name);
  std::vector<const char*> ptrs;
  for (const auto& s : values) ptrs.push_back(s.c_str());
  if (!ptrs.empty() && H5Dwrite(dset.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, ptrs.data()) < 0)
    fail<RuntimeError>(path_, "H5Dwrite", name);
}

namespace {
void write_attr(const File& f, const std::string& object, const std::string& name, hid_t type, const void* data) {
  Handle obj = open_object(f, object);
  if (H5Aexists(obj.get(), name.c_str()) > 0) H5Adelete(obj.get(), name.c_str());
  Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  Handle attr(H5Acreate2(obj.get(), name.c_str(), type, space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  if (attr.get() < 0) fail<RuntimeError>(f.path(), "H5Acreate2", object + "@" + name);
  if (H5Awrite(attr.get(), type, data) < 0) fail<RuntimeError>(f.path(), "H5Awrite", object + "@" + name);
}
}  // namespace

void File::set_attr(const std::string& object, const std::string& name, const std::string& value) {
  Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type.get(), H5T_VARIABLE);
  H5Tset_cset(type.get(), H5T_CSET_UTF8);
  const char* p = value.c_str();
  write_attr(*this, object, name, type.get(), &p);
}
void File::set_attr(const std::string& object, const std::string& name, double value) {
  write_attr(*this, object, name, H5T_NATIVE_DOUBLE, &value);
}
void File::set_attr(const std::string& object, const std::string& name, int64_t value) {
  write_attr(*this, object, name, H5T_NATIVE_INT64, &value);
}

bool File::has_attr(const std::string& object, const std::string& name) const {
  Handle obj = open_object(*this, object);
  return H5Aexists(obj.get(), name.c_str()) > 0;
}

std::string File::attr_string(const std::string& object, const std::string& name) const {
  Handle obj = open_object(*this, object);
  Handle attr(H5Aopen(obj.get(), name.c_str(), H5P_DEFAULT), H5Aclose);
  if (attr.get() < 0) fail<InputError>(path_, "H5Aopen", object + "@" + name);
  Handle ftype(H5Aget_type(attr.get()), H5Tclose);
  if (H5Tget_class(ftype.get()) != H5T_STRING) throw InputError(path_ + ": attribute '" + name + "' is not a string");
  if (H5Tis_variable_str(ftype.get()) > 0) {
    Handle mtype(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(mtype.get(), H5T_VARIABLE);
    H5Tset_cset(mtype.get(), H5Tget_cset(ftype.get()));
    char* s = nullptr;
    if (H5Aread(attr.get(), mtype.get(), &s) < 0) fail<InputError>(path_, "H5Aread", name);
    std::string out = s ? s : "";
    H5free_memory(s);
    return out;
  }
  std::string buf(H5Tget_size(ftype.get()), '\0');
  if (H5Aread(attr.get(), ftype.get(), buf.data()) < 0) fail<InputError>(path_, "H5Aread", name);
  buf.erase(buf.find_last_not_of('\0') + 1);
  return buf;
}

double File::attr_double(const std::string& object, const std::string& name) const {
  Handle obj = open_object(*this, object);
  Handle attr(H5Aopen(obj.get(), name.c_str(), H5P_DEFAULT), H5Aclose);
  if (attr.get() < 0) fail<InputError>(path_, "H5Aopen", object + "@" + name);
  double v = 0;
  if (H5Aread(attr.get(), H5T_NATIVE_DOUBLE, &v) < 0) fail<InputError>(path_, "H5Aread", name);
  return v;
}

void File::close() {
  if (handle_.get() < 0) return;
  if (writable_ && H5Fflush(handle_.get(), H5F_SCOPE_GLOBAL) < 0) fail<RuntimeError>(path_, "H5Fflush", "");
  const hid_t id = handle_.release();
  if (H5Fclose(id) < 0) fail<RuntimeError>(path_, "H5Fclose", "");
}

// The file is built in memory (HDF5's core driver, no backing store) and its image written with
// plain I/O: a full disk or a failed write is then an ordinary write error. (Written directly, a
// failed H5Fflush leaves a file HDF5 cannot close, and HDF5 1.10 crashes at exit trying again.)
void write_file_atomically_impl(const std::string& path, void (*fill)(File&, void*), void* ctx) {
  File f;
  f.path_ = path;
  f.writable_ = true;
  {
    Handle fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
    if (fapl.get() < 0 || H5Pset_fapl_core(fapl.get(), 1 << 20, /*backing_store=*/0) < 0)
      fail<RuntimeError>(path, "H5Pset_fapl_core", "");
    const hid_t id = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get());
    if (id < 0) fail<RuntimeError>(path, "H5Fcreate (in memory)", "");
    f.handle_ = Handle(id, H5Fclose);
  }
  fill(f, ctx);
  if (H5Fflush(f.handle_.get(), H5F_SCOPE_GLOBAL) < 0) fail<RuntimeError>(path, "H5Fflush (in memory)", "");
  const ssize_t n = H5Fget_file_image(f.handle_.get(), nullptr, 0);
  if (n < 0) fail<RuntimeError>(path, "H5Fget_file_image", "");
  std::vector<char> image(static_cast<size_t>(n));
  if (H5Fget_file_image(f.handle_.get(), image.data(), image.size()) != n)
    fail<RuntimeError>(path, "H5Fget_file_image", "");
  f.close();
  fs::write_atomically(path, [&](const fs::stdfs::path& tmp) {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) fs::throw_write_error(tmp);
    out.write(image.data(), static_cast<std::streamsize>(image.size()));
    out.flush();
    if (!out) fs::throw_write_error(tmp);
  });
}

}  // namespace lorarec::io::h5
