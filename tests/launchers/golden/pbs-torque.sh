#!/bin/bash
#PBS -N edge-w-000042
#PBS -o /scratch/edge/w-000042/w-000042.out
#PBS -e /scratch/edge/w-000042/w-000042.err
#PBS -l nodes=2:ppn=8:gpus=1
#PBS -l walltime=01:30:00
#PBS -A proj42
#PBS -q regular
# hpc-edge worker w-000042: 8 ranks on 2 node(s), walltime 01:30:00
# PBS has no portable warning signal: the relay drains by HPC_EDGE_ALLOCATION_END.

cd /scratch/edge/w-000042 || { echo "hpc-edge: cannot cd to" /scratch/edge/w-000042 >&2; exit 1; }

# What the relay needs to know about its allocation (it drains before the end).
export HPC_EDGE_WORKER_ID=w-000042
export HPC_EDGE_BATCH_SYSTEM=pbs
export HPC_EDGE_ALLOCATION_END=$(( $(date +%s) + 5400 ))
export OMP_NUM_THREADS=2
export EDGE_MSG='hello $USER; bye'

# Site environment setup
module load python/3.11
source /opt/site/edge-env.sh

# The launcher runs in the background so this shell can forward the warning signal
# (USR1) to it; mpiexec (MPICH hydra) passes SIGUSR1 on to every rank.
mpiexec -n 8 /opt/hpc-edge/bin/python -m hpc_edge worker --tower tcp://login01:5555 --label 'it'"'"'s a test' &
launcher_pid=$!
trap 'kill -s USR1 "$launcher_pid" 2>/dev/null' USR1
trap 'kill -s TERM "$launcher_pid" 2>/dev/null' TERM
status=0
while kill -0 "$launcher_pid" 2>/dev/null; do
    wait "$launcher_pid"
    status=$?
done
exit "$status"
