#!/usr/bin/env bash
# The README's main job on the bundled Swiss-Prot sample: sets up .venv, then
# shows what the ProtT5 pre-training task feeds the model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export TF_CPP_MIN_LOG_LEVEL=2
echo "== ProtT5 denoising examples from the bundled corpus (_ = masked residue)"
.venv/bin/python scripts/show_examples.py --task swissprot_sample_prott5_denoise \
    --num_examples 3 --stderrthreshold=error
