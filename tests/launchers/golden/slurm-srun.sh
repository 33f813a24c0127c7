#!/bin/bash
#SBATCH --job-name=edge-w-000042
#SBATCH --output=/scratch/edge/w-000042/w-000042.out
#SBATCH --error=/scratch/edge/w-000042/w-000042.err
#SBATCH --nodes=2
#SBATCH --ntasks=8
#SBATCH --ntasks-per-node=4
#SBATCH --cpus-per-task=2
#SBATCH --gpus-per-node=1
#SBATCH --time=01:30:00
#SBATCH --account=proj42
#SBATCH --partition=regular
#SBATCH --signal=USR1@90
# hpc-edge worker w-000042: 8 ranks on 2 node(s), walltime 01:30:00

cd /scratch/edge/w-000042 || { echo "hpc-edge: cannot cd to" /scratch/edge/w-000042 >&2; exit 1; }

# What the relay needs to know about its allocation (it drains before the end).
export HPC_EDGE_WORKER_ID=w-000042
export HPC_EDGE_BATCH_SYSTEM=slurm
export HPC_EDGE_ALLOCATION_END=$(( $(date +%s) + 5400 ))
export OMP_NUM_THREADS=2
export EDGE_MSG='hello $USER; bye'

# Site environment setup
module load python/3.11
source /opt/site/edge-env.sh

# srun (Slurm 22.05+) does not inherit --cpus-per-task from the allocation.
export SRUN_CPUS_PER_TASK=2
# srun takes the rank count from the allocation (--ntasks); the ranks are a job step, so a
# warning signal without "B:" reaches them directly.
exec srun --mpi=pmi2 /opt/hpc-edge/bin/python -m hpc_edge worker --tower tcp://login01:5555 --label 'it'"'"'s a test'
