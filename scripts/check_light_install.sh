#!/usr/bin/env bash
# The light install, checked as a user gets it: builds the wheel, installs it
# with only the pinned base set (requirements-base.txt: no TensorFlow, seqio
# or gin) into a fresh venv, then, from another directory, embeds a FASTA
# with `prottrans-embed` and converts with `prottrans-convert` a tiny T5
# saved by transformers (made with the full .venv, which has transformers).
# Prints the install time, the venv's size (and the full .venv's beside it)
# and the converter's import peak RSS.
#
#   bash scripts/check_light_install.sh [WORK_DIR]     (default /tmp/light)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/tmp/light}
PYTHON=${PYTHON:-python3.11}
rm -rf "$work" && mkdir -p "$work"
cd "$work"

"$repo/.venv/bin/pip" wheel --quiet --disable-pip-version-check --no-deps \
  -w "$work/dist" "$repo"
start=$(date +%s)
"$PYTHON" -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check \
  -r "$repo/requirements-base.txt" "$work"/dist/prottrans_jax-*.whl
echo "base install: $(( $(date +%s) - start )) s; venv $(du -sm "$work/venv" | cut -f1) MB" \
     "(full .venv: $(du -sm "$repo/.venv" | cut -f1) MB)"

"$repo/.venv/bin/python" - "$work/tiny_t5" <<'PY'
import sys
import transformers
config = transformers.T5Config(vocab_size=128, d_model=32, d_kv=8, d_ff=64,
                               num_layers=2, num_heads=4,
                               feed_forward_proj="gated-gelu")
transformers.T5EncoderModel(config).save_pretrained(sys.argv[1])
PY
printf '>P1 first\nMKTAYIAKQRQISFVKSHFSRQ\n>P2\nGSHMLEDPVDAFQ\n' > x.fasta

export JAX_PLATFORMS=cpu
"$work/venv/bin/prottrans-embed" --hf_model_dir "$work/tiny_t5" \
  --input x.fasta --output y.h5 --per_protein --noprogress
"$work/venv/bin/prottrans-convert" --from hf --to native \
  --input "$work/tiny_t5" --output "$work/native"
"$work/venv/bin/python" - <<'PY'
import resource, sys
import prottrans_jax.convert.formats  # noqa: F401  (the converter)
print(f"converter import peak RSS: "
      f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
train = sorted({"tensorflow", "seqio", "tensorflow_datasets", "apache_beam",
                "gin"} & set(sys.modules))
assert not train, train
import h5py
with h5py.File("y.h5") as f:
  print("y.h5:", {name: f[name].shape for name in f})
PY
if "$work/venv/bin/prottrans-train" --help >train.log 2>&1; then
  echo "prottrans-train ran without the [train] extra?"; exit 1
fi
cat train.log
echo "light install OK"
