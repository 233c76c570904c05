#!/usr/bin/env bash
# The README's main job, on the bundled Swiss-Prot sample (100 proteins):
# set up .venv, show the pre-training task, pre-train a tiny ProtT5 for 300
# steps, evaluate it, embed the sample with the checkpoint it trained, and
# train the paper's light heads on those embeddings (secondary structure from
# the entries' HELIX/STRAND/TURN features, localization), predict and map.
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

echo "== 1/6 ProtT5 denoising examples from the bundled corpus (_ = masked residue)"
quiet $PY scripts/show_examples.py --task swissprot_sample_prott5_denoise \
    --num_examples 2

echo "== 2/6 Pre-training tiny ProtT5 (300 steps; watch the loss fall)"
$PY scripts/train.py --gin_file=models/prott5_tiny.gin \
    --gin_file=runs/quickstart.gin 2>&1 |
  grep --line-buffered -E "\] (step|eval step|restored)" | sed -E 's/^.*\] //; s/ \(.*$//'

echo "== 3/6 Validation: masked-residue accuracy vs. always guessing the most common residue"
$PY scripts/eval.py --gin_file=runs/eval.gin \
    --gin.MODEL_DIR="'$OUT/prott5_tiny'" \
    --gin.TASK_FEATURE_LENGTHS="{'inputs': 128, 'targets': 128}" 2>&1 |
  grep -E "masked_residue_accuracy" | sed -E 's/^.*\] //'

echo "== 4/6 Embedding the bundled proteins with the trained checkpoint"
quiet $PY scripts/embed.py --input prottrans_jax/data/sample/swissprot_sample.fasta \
    --output "$OUT/swissprot_sample.h5" --checkpoint_dir "$OUT/prott5_tiny"
$PY - <<PYEOF
import h5py
with h5py.File("$OUT/swissprot_sample.h5") as f:
    name = sorted(f)[0]
    print(f"{len(f)} proteins in $OUT/swissprot_sample.h5; e.g. {name}: "
          f"{f[name].shape} ({f[name].attrs['original_id'][:60]})")
PYEOF

echo "== 5/6 Training the paper's light heads on these embeddings (secondary structure, localization)"
LABELS="prottrans_jax/data/sample/swissprot_sample_annotations.tsv --label_format sample"
for head in ss_cnn:ss mlp:loc; do
  quiet $PY scripts/train_downstream.py --head "${head%:*}" --labels $LABELS \
      --embeddings "$OUT/swissprot_sample.h5" --output_dir "$OUT/heads/${head#*:}" \
      --max_epochs 30
done

echo "== 6/6 Predictions and a 2-D map of the proteins, coloured by localization"
quiet $PY scripts/predict.py --fasta prottrans_jax/data/sample/swissprot_sample.fasta \
    --embeddings "$OUT/swissprot_sample.h5" --heads "$OUT/heads/ss,$OUT/heads/loc" \
    --output_prefix "$OUT/predictions"
quiet $PY scripts/visualize.py --embeddings "$OUT/swissprot_sample.h5" --labels $LABELS \
    --output "$OUT/sample_map.png"
echo "Outputs in $OUT/: prott5_tiny/ (checkpoint), swissprot_sample.h5 (embeddings),"
echo "heads/, predictions.tsv and .json, sample_map.png"
