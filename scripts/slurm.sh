#!/bin/bash
# Train genlab on a SLURM cluster: one task per GPU, launched by srun, any number of nodes.
#
#   sbatch scripts/slurm.sh model=vae data=mnist                    # 1 node, 4 GPUs (the defaults below)
#   sbatch --nodes=2 --gpus-per-node=8 --ntasks-per-node=8 scripts/slurm.sh model=gpt trainer=fsdp
#
# Time limits and preemption: SLURM sends SIGUSR1 90 s before the limit; every rank finishes its
# batch, <run>/checkpoints/last.ckpt is saved and the job is requeued (same job id). A SIGTERM
# (preemption, scancel) saves and stops the same way, without the requeue. The requeued job runs
# this script again and resume=auto continues logs/<model>/slurm-<job id>/ from last.ckpt, W&B run
# included. To continue by hand later: sbatch scripts/slurm.sh ... run_name=slurm-<job id>
#
#SBATCH --job-name=genlab
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4          # one task per GPU: keep equal to --gpus-per-node
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8            # data loader workers per GPU
#SBATCH --mem=0                      # all of each node's memory
#SBATCH --time=24:00:00
#SBATCH --signal=SIGUSR1@90          # the warning signal: save and requeue (preempt_signal=SIGUSR1)
#SBATCH --requeue                    # allow requeueing (on SIGUSR1 by genlab, or by SLURM on preemption)
#SBATCH --open-mode=append           # a requeued job appends to the same log files
#SBATCH --output=slurm-%j.out        # in the submit folder (SLURM opens it before this script runs)

set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
PYTHON=${PYTHON:-.venv/bin/python}

# Lightning reads ranks and the master address from SLURM's variables; the node and device counts
# must match the allocation. Your arguments come last, so trainer=fsdp replaces the DDP preset.
srun "$PYTHON" -m genlab.train \
    trainer=ddp_multinode \
    trainer.accelerator=gpu \
    trainer.num_nodes="$SLURM_JOB_NUM_NODES" \
    trainer.devices="$SLURM_NTASKS_PER_NODE" \
    resume=auto \
    "$@"
