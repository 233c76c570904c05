#!/usr/bin/env bash
# The README's main job, on the bundled Swiss-Prot sample (100 proteins):
# set up .venv, show the pre-training task, pre-train a tiny ProtT5 for 300
# steps, evaluate it, and embed the sample with the checkpoint it trained.
# Everything lands in runs/quickstart/. Running it again resumes: training
# restores its last step, embedding skips proteins already in the file.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export TF_CPP_MIN_LOG_LEVEL=2 JAX_PLATFORMS=cpu
PY=.venv/bin/python
OUT=runs/quickstart
mkdir -p "$OUT"
# Keeps our own output and errors; drops library start-up chatter (XLA, TF,
# absl INFO/WARNING lines) from stderr.
quiet() { "$@" 2> >(grep -v -E "^[IW][0-9]{4} |^WARNING: All log|cuda|cuInit" >&2); }

echo "== 1/4 ProtT5 denoising examples from the bundled corpus (_ = masked residue)"
quiet $PY scripts/show_examples.py --task swissprot_sample_prott5_denoise \
    --num_examples 2

echo "== 2/4 Pre-training tiny ProtT5 (300 steps; watch the loss fall)"
$PY scripts/train.py --gin_file=gin/models/prott5_tiny.gin \
    --gin_file=gin/runs/quickstart.gin 2>&1 |
  grep --line-buffered -E "\] (step|eval step|restored)" | sed -E 's/^.*\] //; s/ \(.*$//'

echo "== 3/4 Validation: masked-residue accuracy vs. always guessing the most common residue"
$PY scripts/eval.py --gin_file=gin/runs/eval.gin \
    --gin.MODEL_DIR="'$OUT/prott5_tiny'" \
    --gin.TASK_FEATURE_LENGTHS="{'inputs': 128, 'targets': 128}" 2>&1 |
  grep -E "masked_residue_accuracy" | sed -E 's/^.*\] //'

echo "== 4/4 Embedding the bundled proteins with the trained checkpoint"
quiet $PY scripts/embed.py --input prottrans_jax/data/sample/swissprot_sample.fasta \
    --output "$OUT/swissprot_sample.h5" --checkpoint_dir "$OUT/prott5_tiny"
$PY - <<PYEOF
import h5py
with h5py.File("$OUT/swissprot_sample.h5") as f:
    name = sorted(f)[0]
    print(f"{len(f)} proteins in $OUT/swissprot_sample.h5; e.g. {name}: "
          f"{f[name].shape} ({f[name].attrs['original_id'][:60]})")
PYEOF
