// Error model of the library: a few typed exceptions, caught once in main.
//
//   InputError   bad input from a user (malformed file, wrong shape, bad option): exit status 2
//   RuntimeError anything else that went wrong at run time (a failed MPI/HDF5/NCCL call): exit 1
//
// Library code throws; only src/cli/main.cpp decides how to report and exit.
#pragma once

#include <stdexcept>
#include <string>

namespace lorarec {

// Exit statuses of the CLI.
inline constexpr int kExitOk = 0;
inline constexpr int kExitRuntime = 1;
inline constexpr int kExitInput = 2;
inline constexpr int kExitCheckpointed = 75;  // stopped early with a checkpoint (signal, --stop-after); resume later

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// Bad input: the message names the file (or option) and the problem in one line.
class InputError : public Error {
 public:
  explicit InputError(const std::string& what) : Error(what) {}
};

// A failure at run time that is not the user's input (library call failed, I/O error).
class RuntimeError : public Error {
 public:
  explicit RuntimeError(const std::string& what) : Error(what) {}
};

// Throws InputError(message) when cond is false. Runtime checks never use assert().
void check_input(bool cond, const std::string& message);

}  // namespace lorarec

#define LORAREC_CHECK_INPUT(cond, msg)               \
  do {                                               \
    if (!(cond)) throw ::lorarec::InputError((msg)); \
  } while (0)

#define LORAREC_CHECK(cond, msg)                                                                   \
  do {                                                                                             \
    if (!(cond))                                                                                   \
      throw ::lorarec::RuntimeError(std::string(msg) + " (" #cond " failed at " + __FILE__ + ":" + \
                                    std::to_string(__LINE__) + ")");                               \
  } while (0)
