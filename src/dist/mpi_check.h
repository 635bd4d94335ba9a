// Private: checked MPI calls.
#pragma once

#include <mpi.h>

#include <string>

#include "lorarecycle/util/error.h"

namespace lorarec::dist::detail {

inline std::string mpi_error_string(int code) {
  char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, buf, &len) != MPI_SUCCESS) return "MPI error " + std::to_string(code);
  return std::string(buf, len);
}

inline int world_rank_or_minus1() {
  int init = 0, fin = 0, r = -1;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  if (init && !fin) MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

}  // namespace lorarec::dist::detail

// Throws RuntimeError with the expression, file:line, rank and MPI's error string.
#define LORAREC_MPI_CHECK(expr)                                                                              \
  do {                                                                                                       \
    const int lorarec_mpi_rc_ = (expr);                                                                      \
    if (lorarec_mpi_rc_ != MPI_SUCCESS)                                                                      \
      throw ::lorarec::RuntimeError(std::string("MPI call ") + #expr + " failed at " + __FILE__ + ":" +      \
                                    std::to_string(__LINE__) + " on rank " +                                 \
                                    std::to_string(::lorarec::dist::detail::world_rank_or_minus1()) + ": " + \
                                    ::lorarec::dist::detail::mpi_error_string(lorarec_mpi_rc_));             \
  } while (0)
