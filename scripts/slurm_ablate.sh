#!/usr/bin/env bash
# The channel ablation as a SLURM job array: each array task trains one interleaved slice of the grid into the
# shared ablation folder; the task that finishes the grid's last run writes results.md (see README, "ablate").
#   sbatch --array=1-8 scripts/slurm_ablate.sh cohort.h5 runs/ablation
# A task may be resubmitted: finished runs are skipped, an interrupted one resumes from its checkpoint, and a
# run another task is training is left to it (each run folder is locked while written).
#SBATCH --job-name=mslesion-ablate
#SBATCH --cpus-per-task=8
#SBATCH --mem=16G
#SBATCH --time=04:00:00
set -euo pipefail
data=${1:?patch file}
out=${2:?ablation folder}
mslesion ablate "$data" --out "$out" --threads "${SLURM_CPUS_PER_TASK:-0}" --quiet \
    --shard "${SLURM_ARRAY_TASK_ID}/${SLURM_ARRAY_TASK_COUNT}"
# Afterwards (or if the last task was cancelled): mslesion ablate "$data" --out "$out" --collect
