// Every environment variable the system reads, in one place.
#pragma once

namespace lorarec::env {

// Launcher detection (read by dist/runtime.cpp).
inline constexpr const char* kOmpiWorldSize = "OMPI_COMM_WORLD_SIZE";  // set by mpirun (Open MPI)
inline constexpr const char* kOmpiLocalRank = "OMPI_COMM_WORLD_LOCAL_RANK";
inline constexpr const char* kPmixRank = "PMIX_RANK";  // set by srun --mpi=pmix
inline constexpr const char* kPmiRank = "PMI_RANK";    // other PMI launchers
inline constexpr const char* kPmiSize = "PMI_SIZE";
inline constexpr const char* kSlurmJobId = "SLURM_JOB_ID";
inline constexpr const char* kSlurmStepId = "SLURM_STEP_ID";
inline constexpr const char* kSlurmNtasks = "SLURM_NTASKS";
inline constexpr const char* kSlurmProcId = "SLURM_PROCID";

// Thread settings: set to 1 per rank at start-up unless the user set them.
inline constexpr const char* kOpenblasThreads = "OPENBLAS_NUM_THREADS";
inline constexpr const char* kOmpThreads = "OMP_NUM_THREADS";

// Fault injection for tests, "RANK:WHERE[@N[+]][:ACTION]": on that rank, the N-th time (default 1)
// the code passes fault point WHERE, ACTION happens: "throw" (default, a RuntimeError), "hang"
// (sleeps forever: a stuck peer), "exit" (std::_Exit(1) without a message: a crashed process),
// "kill" (the process sends itself SIGKILL: as if killed by the OOM killer or a user) or
// "corrupt" (the caller corrupts its data: a NaN loss at "pretrain" and "zoo-step", a perturbed
// replica at "replica").
// Points: "start" (after runtime start-up), "zoo" (after each LoRA is saved), "invert" (after each
// pool file), "metatrain" (each step, before the all-reduce), "eval" (after each result row and
// each lora-ft episode), "replica" (metatrain, each step after the update), "pretrain" and
// "zoo-step" (each training step). Never set it in real runs.
inline constexpr const char* kFaultInject = "LORAREC_FAULT";

// Dev tool (util/op_trace.h): a Chrome trace of every op of LORAREC_OP_TRACE_STEPS (default 10)
// metatrain steps (rank 0) or invert iterations (the first LoRA's, from the sixth on), written to the
// file LORAREC_OP_TRACE names.
inline constexpr const char* kOpTrace = "LORAREC_OP_TRACE";
inline constexpr const char* kOpTraceSteps = "LORAREC_OP_TRACE_STEPS";

// Dev tool for side-by-side benchmarks (bench/perf.sh KERNEL_AB=1): "gelu", "softmax",
// "layer_norm", "bmm" or "1" (all four) makes model::quick_gelu / model::softmax_last_dim /
// model::layer_norm_as run ATen's ops instead of the CPU kernels of src/model/cpu_kernels.cpp
// (same values within rounding; layer_norm_as then writes float, as at::layer_norm), and
// model::bmm_nograd at::bmm instead of one cblas_sgemm per matrix.
inline constexpr const char* kAtenKernels = "LORAREC_ATEN_KERNELS";
// Dev tool for side-by-side benchmarks (bench/perf.sh KERNEL_AB=isa): caps the instruction set of
// the CPU kernels (src/model/cpu_kernels.h) at "generic", "avx2", "avx512" or "avx512bf16".
inline constexpr const char* kKernelIsa = "LORAREC_KERNEL_ISA";
// Dev tool for side-by-side benchmarks (bench/perf.sh): "1" makes the explicit attention path run
// as separate ATen ops (model::Attention::kExplicitOps) instead of model::attention_block's node.
inline constexpr const char* kUnfusedAttention = "LORAREC_UNFUSED_ATTENTION";

// Returns the variable's value or nullptr.
const char* get(const char* name);

// A fault point (see kFaultInject); does nothing unless LORAREC_FAULT names this rank and point.
// Returns true when the action is "corrupt" (the caller then corrupts its data). "@N+" fires at
// the N-th pass and every later one.
bool fault_point(int rank, const char* where);

}  // namespace lorarec::env
