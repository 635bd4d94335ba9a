# Site settings sourced by every batch job of cluster/. ADAPT THIS FILE to your cluster:
#  - partition/account: set SBATCH_PARTITION / SBATCH_ACCOUNT in your environment (sbatch reads
#    them) or pass --partition/--account to cluster/pipeline.sh;
#  - software: load the modules that provide Open MPI (with PMIx), HDF5, Boost and, on GPU nodes,
#    CUDA + NCCL, the same ones lorarecycle was built with;
#  - NCCL network: on multi-node GPU runs name the interface NCCL must use (ib0, eth0, ...).
# Examples (commented out):
#   module load openmpi/4.1 hdf5/1.10 boost/1.74 cuda/12.4 nccl/2.21
#   export NCCL_SOCKET_IFNAME=ib0
#   export NCCL_IB_HCA=mlx5
REPO=${LORAREC_REPO:?LORAREC_REPO must name the lorarecycle checkout}
source "$REPO/launch/env.sh"
LORAREC_BIN=${LORAREC_BIN:-$REPO/build/lorarecycle}
# Slurm starts ranks through PMIx (Debian's Open MPI has no PMI2 support).
# srun is given the job's --cpus-per-task: since Slurm 22.05 it no longer inherits it from sbatch.
SRUN=(srun --mpi=pmix --kill-on-bad-exit=1 --cpus-per-task "${SLURM_CPUS_PER_TASK:-1}")
