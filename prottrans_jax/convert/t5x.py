"""Native T5X checkpoints -> this project's params, without importing t5x.

Two layouts, both holding `target/...` (the parameters, under the same names
as ours) and `state/step`:

- classic: a msgpack file `checkpoint` (flax serialization) of
  `{"optimizer": {"target": ..., "state": {"step", "param_states"}}}` whose
  leaves are small inline arrays or TensorStore specs of zarr folders beside
  it, named by the tree path joined with dots;
- Orbax (newer T5X): `state/` is an OCDBT key-value store holding the same
  dotted zarr folders.

T5X keeps the model's hyper-parameters in gin, not in the checkpoint, so the
config is read off the parameter names and shapes (`config_from_shapes`),
the variant included: `mlp/wi_0` and `mlp/wi_1` instead of `mlp/wi` are
T5 1.1's gated MLP, `decoder/logits_dense/kernel` its untied output layer.
Activations are not stored either: a gated MLP is taken to be T5X's T5 1.1
(`mlp_activations=("gelu", "linear")` with flax's tanh GELU, Hugging Face's
"gated-gelu"), an ungated one ReLU (T5 1.0), unless `feed_forward_proj` is
given. The relative-position max distance is not stored and defaults to
T5's 128.

The arrays are read with TensorStore's local file driver: a checkpoint at a
URL (`gs://...`) is copied to local disk first (`formats.convert_checkpoint`
copies the one checkpoint `checkpoint_directory` picks, through
`prottrans_jax.fs`).
"""
import os
import re
from typing import Any, Optional

from etils import epath
import flax.serialization
import numpy as np
import tensorstore as ts

from prottrans_jax import fs
from prottrans_jax.convert import hf_t5
from prottrans_jax.convert import mapping
from prottrans_jax.models import t5

MSGPACK_FILE = "checkpoint"
ORBAX_STATE_DIR = "state"
_TARGET = "target"
_STEP = "state.step"


def checkpoint_directory(path: fs.PathLike) -> epath.Path:
  """`path` itself if it is one checkpoint, else its latest `checkpoint_<step>`
  (`path` local or a URL)."""
  path = fs.path(path)
  if not path.is_dir():
    raise FileNotFoundError(f"T5X checkpoint directory does not exist: {path}")
  if (path / MSGPACK_FILE).is_file() or (path / ORBAX_STATE_DIR).is_dir():
    return path
  steps = sorted((int(m.group(1)), p) for p in path.iterdir()
                 if (m := re.fullmatch(r"checkpoint_(\d+)", p.name)))
  if not steps:
    raise FileNotFoundError(
        f"{path} is not a T5X checkpoint: no {MSGPACK_FILE} file, no "
        f"{ORBAX_STATE_DIR}/ folder and no checkpoint_<step> folders")
  return steps[-1][1]


def _read(spec: dict) -> np.ndarray:
  return np.asarray(ts.open(spec, open=True).result().read().result())


def _classic_arrays(directory: epath.Path) -> dict[str, Any]:
  """Dotted names -> inline arrays or zarr specs (paths made local)."""
  tree = flax.serialization.msgpack_restore((directory / MSGPACK_FILE).read_bytes())
  optimizer = tree["optimizer"]
  out = {}

  def walk(node, prefix):
    if isinstance(node, dict) and "driver" not in node:
      for key, child in node.items():
        walk(child, f"{prefix}.{key}")
    elif isinstance(node, dict):
      # The folder's name is the last component of its path, wherever the
      # spec keeps it (`kvstore.path`, or top-level `path` in old ones) and
      # whatever bucket it names: the folder is beside the msgpack file.
      path = node.get("kvstore", {}).get("path") or node["path"]
      folder = path.rstrip("/").split("/")[-1]
      out[prefix] = {"driver": node["driver"],
                     "kvstore": {"driver": "file", "path": str(directory / folder)}}
    else:
      out[prefix] = np.asarray(node)

  walk(optimizer["target"], _TARGET)
  walk(optimizer["state"]["step"], _STEP)
  return out


def _orbax_arrays(directory: epath.Path) -> dict[str, Any]:
  base = {"driver": "ocdbt", "base": f"file://{directory / ORBAX_STATE_DIR}/"}
  keys = ts.KvStore.open(base).result().list().result()
  out = {}
  for key in keys:
    key = key.decode()
    for marker, driver in (("/.zarray", "zarr"), ("/zarr.json", "zarr3")):
      if key.endswith(marker):
        name = key[:-len(marker)]
        out[name] = {"driver": driver, "kvstore": {**base, "path": name + "/"}}
  return out


_WI = "encoder/layers_0/mlp/wi/kernel"
_WI_0 = "encoder/layers_0/mlp/wi_0/kernel"
_LOGITS_DENSE = "decoder/logits_dense/kernel"


def config_from_shapes(shapes: dict[str, tuple[int, ...]], **overrides: Any) -> t5.T5Config:
  """The T5Config of a T5 parameter tree, from its names and shapes.

  T5 1.0 (`mlp/wi`, logits tied to the embedding) or the T5 1.1 variants
  (`mlp/wi_0` + `wi_1`: gated, "gated-gelu" unless `feed_forward_proj` is
  overridden; `decoder/logits_dense/kernel`: untied). Every name and shape
  is checked against the model later (read_t5x_checkpoint).
  """
  if _WI in shapes and _WI_0 in shapes:
    raise mapping.ConversionError(
        f"Not a T5 network: both {_WI} (ungated MLP) and {_WI_0} (gated MLP) are present")
  gated = _WI_0 in shapes
  try:
    vocab_size, d_model = shapes["token_embedder/embedding"]
    num_heads, num_buckets = shapes["encoder/relpos_bias/rel_embedding"]
    joined = shapes["encoder/layers_0/attention/query/kernel"][1]
    d_ff = shapes[_WI_0 if gated else _WI][1]
  except KeyError as e:
    raise mapping.ConversionError(
        f"Not a T5 network: parameter {e} is missing") from e
  except ValueError as e:
    raise mapping.ConversionError(
        f"Not a T5 network: unexpected parameter shapes ({e})") from e

  def num_layers(stack):
    return len({m.group(1) for n in shapes if (m := re.match(rf"{stack}/layers_(\d+)/", n))})

  fields = dict(vocab_size=vocab_size, d_model=d_model, num_heads=num_heads,
                d_kv=joined // num_heads, d_ff=d_ff,
                num_encoder_layers=num_layers("encoder"),
                num_decoder_layers=num_layers("decoder"),
                relative_attention_num_buckets=num_buckets,
                feed_forward_proj="gated-gelu" if gated else "relu",
                tie_word_embeddings=_LOGITS_DENSE not in shapes)
  fields.update(overrides)
  return t5.T5Config.from_dict(fields)


def read_t5x_checkpoint(directory: os.PathLike, encoder_only: bool = False,
                        **config_overrides: Any
                        ) -> tuple[t5.T5Config, dict[str, mapping.Loader], Optional[int]]:
  """(config, {our name: loader}, step) of a T5X checkpoint.

  `directory` is one checkpoint (`checkpoint_<step>`) or a T5X model dir
  (its latest checkpoint). Arrays are read when their loader is called.
  `step` is the optimizer step (None if the checkpoint has none).
  The variant (gated MLP, untied output layer) is read off the whole tree,
  decoder included, also when `encoder_only` drops the decoder;
  `config_overrides` replace any field (e.g. `feed_forward_proj`, `dtype`).
  `directory` is local (see the module docstring for URLs).
  """
  if fs.is_remote(directory):
    raise ValueError(
        f"{directory}: T5X checkpoints are read from local disk; copy it "
        "first (prottrans_jax.fs.local_copy; convert_checkpoint does)")
  directory = checkpoint_directory(directory)
  arrays = (_classic_arrays(directory) if (directory / MSGPACK_FILE).is_file()
            else _orbax_arrays(directory))
  prefix = _TARGET + "."
  sources = {name[len(prefix):].replace(".", "/"): source
             for name, source in arrays.items() if name.startswith(prefix)}

  def shape_of(source):
    return tuple(source.shape) if isinstance(source, np.ndarray) else tuple(
        ts.open(source, open=True).result().shape)

  shapes = {name: shape_of(source) for name, source in sources.items()}
  config = config_from_shapes(shapes, **config_overrides)
  if encoder_only:
    sources = {n: s for n, s in sources.items() if not n.startswith("decoder/")}
    shapes = {n: shapes[n] for n in sources}
  expected = hf_t5.CONVERTER.expected_shapes(config, () if encoder_only else (hf_t5.DECODER,))
  mapping.check_names(set(shapes), set(expected), f"the T5X checkpoint {directory}")
  for name, shape in shapes.items():
    mapping.check_shape(f"{_TARGET}/{name}", shape, expected[name])

  def loader(source):
    return (lambda: source) if isinstance(source, np.ndarray) else (lambda: _read(source))

  step = int(loader(arrays[_STEP])()) if _STEP in arrays else None
  return config, {name: loader(source) for name, source in sources.items()}, step

