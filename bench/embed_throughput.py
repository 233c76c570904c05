"""Embedding throughput: our engine against transformers' T5EncoderModel
(and BertModel for the ProtBert rows), on a CPU or a GPU.

Both run the same random weights (a transformers model converted by our
converter) on the same real proteins, in the same batches (sorted by length,
padded tokens per batch and device within --max_tokens), in one process, and
the script prints residues/s of each, their ratio, and our achieved FLOP/s
as a fraction of the device's dense matmul peak: the one measured in the
same run (an XLA matrix product in the compute dtype) and, on a GPU, the
vendor's nominal dense bfloat16 figure. Our engine pads each batch to its
bucket (buckets fitted to the proteins; it compiles once per bucket);
transformers runs eagerly, so it gets what its users do, padding to the
batch's longest protein (`padding=True`), with its ids tokenized and on the
device before the clock starts (ours tokenize in the pass). Both bring the
embeddings back to host memory, as an embedding job must.

The engines take turns, --rounds times each (after an untimed pass of each:
our compilations, transformers' first-call set-up, timed and printed), and
the figures are medians over rounds; a ratio is the median of the per-round
ratios, which are printed too.

  python bench/embed_throughput.py                # CPU: tiny, prott5_xl, protbert
  python bench/embed_throughput.py --configs=tiny --max_proteins=200
  python bench/embed_throughput.py --configs=tiny --dtype=bfloat16  # both engines bf16
  python bench/embed_throughput.py --configs=protxlnet_tiny,prottxl_tiny  # ProtTXL: ours only

On a GPU machine (a CUDA JAX + PyTorch image: no TensorFlow, seqio or gin
needed; from the repository root, with the DeepLoc test set copied to
.device_data/):

  PYTHONPATH=. JAX_COMPILATION_CACHE_DIR=/tmp/jaxcache \
  python3 bench/embed_throughput.py --configs=prott5_xl \
      --dtype=bfloat16,float16 --hf_dtype=float16 --max_tokens=16384 \
      --fasta=.device_data/deeploc_test_set.fasta --max_proteins=500 \
      --xl_proteins=0

(The README's H100 row: `--dtype=bfloat16 --rounds=2`. The 500 proteins
need 25 bucket lengths, and compiling the XL encoder for them took 367 s on
an H100's host the first time, 38 s from the compilation cache: allow for
that in a lease's time, per --dtype.)

The CPU's model name and its vector flags (AVX2, AVX-512, AVX-512 BF16,
AMX) are printed beside the table: on CPUs with AMX, torch's bfloat16
matrix products use it and XLA:CPU's do not (the matmul line prints both).
FLOPs are counted on the proteins' true lengths (useful work), not on the
padding the batches carry.
"""

import dataclasses
import os
import time

# JAX takes 75% of a GPU's memory at start-up by default; transformers runs
# in the same process.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from flax import linen as nn  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import torch  # pylint: disable=g-import-not-at-top,wrong-import-position
import transformers  # pylint: disable=g-import-not-at-top,wrong-import-position

from prottrans_jax import cli  # pylint: disable=g-import-not-at-top,wrong-import-position
from prottrans_jax import families  # pylint: disable=g-import-not-at-top,wrong-import-position
from prottrans_jax.convert import mapping  # pylint: disable=g-import-not-at-top,wrong-import-position
from prottrans_jax.data import fasta  # pylint: disable=g-import-not-at-top,wrong-import-position
from prottrans_jax.inference import batching  # pylint: disable=g-import-not-at-top,wrong-import-position
from prottrans_jax.inference import engine  # pylint: disable=g-import-not-at-top,wrong-import-position
from prottrans_jax.models import bert  # pylint: disable=g-import-not-at-top,wrong-import-position
from prottrans_jax.models import t5  # pylint: disable=g-import-not-at-top,wrong-import-position
from prottrans_jax.models import transfo_xl  # pylint: disable=g-import-not-at-top,wrong-import-position
from prottrans_jax.models import xlnet  # pylint: disable=g-import-not-at-top,wrong-import-position

import _machine  # pylint: disable=g-import-not-at-top,wrong-import-position

_DEFAULT_FASTA = os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                              "data", "sequences", "globins45.fasta")
# Rows besides t5.T5_CONFIGS' sizes (by their names there).
_OTHER_ROWS = {"protbert": bert.BERT_CONFIGS["protbert"],
               "protbert_tiny": bert.BERT_CONFIGS["tiny"],
               "protxlnet": xlnet.XLNET_CONFIGS["protxlnet"],
               "protxlnet_tiny": xlnet.XLNET_CONFIGS["tiny"],
               # No transformers row: Transformer-XL left transformers in 5.0.
               "prottxl_tiny": transfo_xl.TRANSFO_XL_CONFIGS["tiny"]}
# Vendors' dense (no sparsity) bfloat16 tensor-core peaks, TFLOP/s, by the
# name the driver reports; float16 is the same on these parts.
NOMINAL_BF16_PEAK_TFLOPS = {
    "H100 80GB HBM3": 989.4, "H100 SXM": 989.4, "H100 NVL": 835.0,
    "H100 PCIe": 756.0, "H200": 989.4, "GH200": 989.4, "A100": 312.0,
    "L40S": 362.0, "L4": 121.0, "A10G": 125.0, "A10": 125.0,
}
_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")

_CONFIGS = flags.DEFINE_list(
    "configs", ["tiny", "prott5_xl", "protbert"],
    f"Model sizes among {sorted(t5.T5_CONFIGS) + sorted(_OTHER_ROWS)}.")
_FASTA = flags.DEFINE_string(
    "fasta", _DEFAULT_FASTA, "Real proteins to embed (default: the globin "
    "family from ../shared/data, lengths 140-160; use "
    "../shared/data/localization/deeploc_test_set.fasta for a wide spread).")
_MAX_PROTEINS = flags.DEFINE_integer(
    "max_proteins", 0, "Use only this many proteins, evenly spaced over the "
    "length-sorted list, so the lengths keep their spread (0: all).")
_XL_PROTEINS = flags.DEFINE_integer(
    "xl_proteins", 12, "Proteins for configs of a billion parameters or "
    "more (0: as many as the others; on a CPU keep it small).")
_DTYPES = flags.DEFINE_list(
    "dtype", ["float32"], "Our engine's compute dtypes, one row each "
    "(float32, bfloat16, float16); its parameters are cast to it too.")
_HF_DTYPE = flags.DEFINE_enum(
    "hf_dtype", None, ["float32", "bfloat16", "float16"],
    "transformers' dtype (default: the first --dtype).")
_MAX_TOKENS = cli.define_max_tokens_flag(
    4096, "Padded tokens per batch per device: rows x our bucket length, "
    "special tokens included. Both engines get the same batches, our "
    "engine's plan (transformers pads each to its longest protein). "
    "--max_residues is its deprecated former name.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timed passes of each engine, "
                               "taken in turns.", lower_bound=1)
flags.adopt_module_key_flags(cli)  # --help lists --max_tokens.


def matmul_peak_flops(dtype: str, size: int, repeats: int = 10
                      ) -> tuple[float, float]:
  """Dense matmul FLOP/s through XLA on the default device in `dtype`:
  (median, best) of `repeats` single products. The median is the
  reference: a mean of back-to-back products swung 86-141 GFLOP/s between
  runs on a shared CPU host, and the best product is a burst no long job
  sustains. (1024^3 on a CPU: torch's bfloat16 product runs below
  1 GFLOP/s on CPUs without AVX-512 BF16 or AMX.)"""
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.dtype(dtype))
  matmul = jax.jit(lambda x, y: x @ y)
  matmul(a, a).block_until_ready()
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, a).block_until_ready()
    seconds.append(time.perf_counter() - start)
  return 2 * size**3 / float(np.median(seconds)), 2 * size**3 / min(seconds)


def torch_matmul_flops(dtype: str, size: int, device: str,
                       repeats: int = 5) -> float:
  """The same median product through torch, for comparison."""
  a = torch.randn(size, size, dtype=getattr(torch, dtype), device=device)
  seconds = []
  for i in range(repeats + 1):
    start = time.perf_counter()
    (a @ a).sum().item()
    if i:
      seconds.append(time.perf_counter() - start)
  return 2 * size**3 / float(np.median(seconds))


def nominal_peak(device_name: str) -> float | None:
  """The vendor's dense bf16 FLOP/s of a GPU named `device_name`, if known."""
  for name, tflops in sorted(NOMINAL_BF16_PEAK_TFLOPS.items(),
                             key=lambda item: -len(item[0])):
    if name in device_name:
      return tflops * 1e12
  return None


def random_hf_encoder(config, dtype: str, device: str):
  """A random transformers encoder (T5EncoderModel, BertModel, ...) in
  `dtype` on `device`, and our params of the same weights (float32 host
  arrays)."""
  torch.manual_seed(0)
  converter = families.of(config).hf_converter
  architecture = converter.architecture_for(config, ())
  hf_config = transformers.AutoConfig.for_model(
      **converter.hf_config(config, architecture, "float32"))
  with torch.device(device):  # Initialised where it runs: fast for 1B+.
    model = getattr(transformers, architecture)(hf_config)
  model = model.to(getattr(torch, dtype)).eval()
  state = {k: v.float().cpu().numpy() for k, v in model.state_dict().items()}
  params = mapping.state_dict_to_params(state, converter, config, architecture,
                                        encoder_only=True)
  return model, params


def random_encoder(config):
  """Random encoder params of our own (float32 host arrays), for a family
  transformers no longer has."""
  family = families.of(config)
  params = nn.meta.unbox(jax.jit(lambda rng: family.init(family.module(config), rng))(
      jax.random.key(0)))
  return jax.tree.map(np.asarray, {k: v for k, v in params.items()
                                   if k not in family.non_encoder_parts})


def spread(records: list[fasta.FastaRecord], count: int) -> list:
  """`count` records evenly spaced over the length-sorted list."""
  if not count or count >= len(records):
    return records
  ordered = sorted(records, key=lambda r: len(r.sequence))
  picks = np.linspace(0, len(ordered) - 1, count).round().astype(int)
  return [ordered[i] for i in picks]


def transformers_pass(model, family, records, plan: list[batching.Batch],
                      device: str):
  """A function that embeds `records` with transformers in our engine's
  batches (`plan`), each padded to its longest protein."""
  token_lengths = [len(r.sequence) + family.num_special_tokens for r in records]
  batches = []
  for batch in plan:
    longest = max(token_lengths[i] for i in batch.indices)
    ids = np.full((len(batch.indices), longest), family.pad_id, np.int64)
    for row, index in enumerate(batch.indices):
      tokens = family.tokenize(records[index].sequence)
      ids[row, :len(tokens)] = tokens
    ids = torch.from_numpy(ids).to(device)
    batches.append((ids, (ids != family.pad_id).long()))

  def embed():
    with torch.inference_mode():
      for ids, mask in batches:
        model(input_ids=ids, attention_mask=mask).last_hidden_state.cpu()
  return embed


def our_pass(embedder: engine.Embedder, records):
  """A function that embeds `records` with our engine (tokenizing and
  fetching the results included, as in prottrans-embed)."""

  def embed():
    for _ in embedder.embed_batches(records):
      pass
  return embed


def timed_rounds(passes: dict, rounds: int) -> tuple[dict, dict]:
  """(seconds of each pass over `rounds` turns, seconds of its first,
  untimed-in-the-figures pass: compilation and set-up)."""
  seconds, first = {name: [] for name in passes}, {}
  for name, embed in passes.items():
    start = time.perf_counter()
    embed()
    first[name] = time.perf_counter() - start
    print(f"  first pass of {name}: {first[name]:.1f} s (compilation and "
          "set-up included)", flush=True)
  for _ in range(rounds):
    for name, embed in passes.items():
      start = time.perf_counter()
      embed()
      seconds[name].append(time.perf_counter() - start)
  return seconds, first


def _cast(params, dtype: str):
  return jax.tree.map(lambda a: np.asarray(a).astype(jnp.dtype(dtype)), params)


def main(argv):
  del argv
  device = jax.devices()[0]
  on_gpu = device.platform == "gpu"
  torch_device = "cuda" if on_gpu and torch.cuda.is_available() else "cpu"
  torch.set_num_threads(len(os.sched_getaffinity(0)))
  hf_dtype = _HF_DTYPE.value or _DTYPES.value[0]
  records = spread(list(fasta.read_fasta(_FASTA.value)), _MAX_PROTEINS.value)
  size = 8192 if on_gpu else 1024
  peaks = {}
  print(f"CPU: {_machine.describe(_CPU_FLAGS)}")
  print(f"JAX {jax.__version__} on {device.platform}: {device.device_kind} "
        f"({len(jax.devices())} device(s)); torch {torch.__version__} on "
        f"{torch_device}; transformers {transformers.__version__}")
  for dtype in dict.fromkeys([*_DTYPES.value, hf_dtype]):
    peaks[dtype], best = matmul_peak_flops(dtype, size)
    theirs = torch_matmul_flops(dtype, size, torch_device)
    print(f"{dtype} {size}^3 matmul: XLA {peaks[dtype] / 1e12:.3f} TFLOP/s "
          f"(median; fastest {best / 1e12:.3f}), torch {theirs / 1e12:.3f} "
          f"TFLOP/s (median)")
  nominal = nominal_peak(device.device_kind) if on_gpu else None
  if nominal:
    print(f"nominal dense bf16 peak of {device.device_kind}: "
          f"{nominal / 1e12:.1f} TFLOP/s")
  print(f"{'config':13} {'proteins':>8} {'residues':>9} {'ours':>8} "
        f"{'hf':>8} {'ours res/s':>11} {'hf res/s':>10} {'ratio':>6} "
        f"{'ours TFLOP/s':>12} {'of matmul':>9} {'of nominal':>10}   "
        "ratio by round; first pass s (ours, hf)")
  for name in _CONFIGS.value:
    config = _OTHER_ROWS[name] if name in _OTHER_ROWS else t5.T5_CONFIGS[name]
    family = families.of(config)
    with_hf = hasattr(transformers, family.hf_converter.architecture_for(config, ()))
    if with_hf:
      hf_model, params = random_hf_encoder(config, hf_dtype, torch_device)
      n_params = sum(p.numel() for p in hf_model.parameters())
    else:
      hf_model, params = None, random_encoder(config)
      n_params = sum(a.size for a in jax.tree.leaves(params))
    subset = (spread(records, _XL_PROTEINS.value) if n_params >= 1e9
              else records)
    residues = sum(len(r.sequence) for r in subset)
    flops = sum(family.encoder_flops(config, len(r.sequence)
                                     + family.num_special_tokens)
                for r in subset)
    settings = engine.EmbedSettings(max_tokens=_MAX_TOKENS.value)
    passes = {}
    for dtype in _DTYPES.value:
      embedder = engine.Embedder(
          dataclasses.replace(config, dtype=dtype, param_dtype=dtype),
          _cast(params, dtype), settings)
      passes[dtype] = our_pass(embedder, subset)
    del params
    if with_hf:
      passes["hf"] = transformers_pass(hf_model, family, subset,
                                       embedder.plan(subset), torch_device)
    seconds, first = timed_rounds(passes, _ROUNDS.value)
    theirs = np.median(seconds["hf"]) if with_hf else None
    for dtype in _DTYPES.value:
      ours = np.median(seconds[dtype])
      achieved = flops / ours
      of_nominal = f"{achieved / nominal:10.1%}" if nominal else f"{'-':>10}"
      if with_hf:
        ratios = [t / o for t, o in zip(seconds["hf"], seconds[dtype])]
        theirs_text = (f"{hf_dtype:>8} {residues / ours:11.1f} {residues / theirs:10.1f} "
                       f"{np.median(ratios):6.2f}")
        rounds_text = (" ".join(f"{r:.2f}" for r in ratios)
                       + f"; {first[dtype]:.1f}, {first['hf']:.1f}")
      else:
        theirs_text = f"{'-':>8} {residues / ours:11.1f} {'-':>10} {'-':>6}"
        rounds_text = f"(no transformers model); {first[dtype]:.1f}, -"
      print(f"{name:13} {len(subset):8d} {residues:9d} {dtype:>8} {theirs_text} "
            f"{achieved / 1e12:12.3f} {achieved / peaks[dtype]:9.1%} {of_nominal}   "
            + rounds_text, flush=True)
    del passes, hf_model, embedder
    if torch_device == "cuda":
      torch.cuda.empty_cache()


if __name__ == "__main__":
  app.run(main)
