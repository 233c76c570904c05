"""Test helper: T5X checkpoints written at test time, in both on-disk layouts.

T5X cannot run here, so tests that need a T5X checkpoint of a variant the
shared fixture lacks (untied `logits_dense`, gated `wi_0`/`wi_1`) build one:
Hugging Face T5 weights renamed to T5X's parameter tree
(`hf_to_t5x_params`), then written the way T5X writes a checkpoint, as
described in ../shared/data/t5x_checkpoint/README.md and checked against the
real T5X-written fixture by tests/test_t5x_variants.py:

- classic (`write_classic`): `checkpoint_<step>/checkpoint`, a msgpack map
  (flax serialization, version 3) of
  `{"optimizer": {"state": {"param_states", "step"}, "target"}}`. Every
  parameter and every full-size optimizer slot is a TensorStore zarr spec of
  a folder beside the file named by its dotted tree path (gzip level 1, one
  chunk: T5X's chunking gives one chunk to arrays this small); unused
  Adafactor slots (shape (1,)) and the step are inline arrays.
- Orbax (`write_orbax`): `checkpoint_<step>/state/`, the same tree without
  the `optimizer` level (`{"state": ..., "target": ...}`) saved by
  orbax-checkpoint's PyTree handler in an OCDBT store, under the same dotted
  names.

The optimizer state is T5X's Adafactor without momentum: `m`, `v_row`,
`v_col` are (1,) placeholders and `v` has the parameter's shape (T5X
factors `v` only when the second-largest dimension is >= 128; the writer
refuses such parameters rather than pretend). Its values stand in for a
second moment (the parameter squared); no reader uses them.

This is test code, not a T5X writer for users.
"""
import pathlib
from typing import Mapping

import flax.serialization
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts

MSGPACK_VERSION = 3  # what T5X's classic checkpoints record
_MIN_DIM_SIZE_TO_FACTOR = 128  # T5X's Adafactor default
_GZIP = {"id": "gzip", "level": 1}


# ---------------------------------------------------------------- naming


def hf_to_t5x_params(state_dict: Mapping[str, np.ndarray], *, num_layers: int,
                     num_decoder_layers: int, gated: bool,
                     tied: bool) -> dict[str, np.ndarray]:
  """A Hugging Face T5 state dict as T5X's flat parameter tree ("a/b/c").

  Written from the two projects' naming conventions, independently of the
  library's converter: HF `Linear` weights are (out, in), T5X kernels
  (in, out), both with heads-major q/k/v/o; HF keeps each stack's
  relative-position table (buckets, heads) in block 0, T5X one (heads,
  buckets) per stack; an untied HF `lm_head.weight` (vocab, d_model) is T5X's
  `decoder/logits_dense/kernel` (d_model, vocab).
  """
  out = {"token_embedder/embedding": state_dict["shared.weight"]}

  def kernel(hf_name, t5x_name):
    out[t5x_name] = np.ascontiguousarray(state_dict[hf_name].T)

  mlp = ("wi_0", "wi_1", "wo") if gated else ("wi", "wo")
  attention = {"q": "query", "k": "key", "v": "value", "o": "out"}
  for stack, layers in (("encoder", num_layers), ("decoder", num_decoder_layers)):
    kernel(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
           f"{stack}/relpos_bias/rel_embedding")
    out[f"{stack}/{stack}_norm/scale"] = state_dict[f"{stack}.final_layer_norm.weight"]
    for i in range(layers):
      hf, t5x = f"{stack}.block.{i}.layer", f"{stack}/layers_{i}"
      if stack == "encoder":
        blocks = [("0", "SelfAttention", "attention", "pre_attention_layer_norm")]
        mlp_block = "1"
      else:
        blocks = [("0", "SelfAttention", "self_attention", "pre_self_attention_layer_norm"),
                  ("1", "EncDecAttention", "encoder_decoder_attention",
                   "pre_cross_attention_layer_norm")]
        mlp_block = "2"
      for index, hf_module, t5x_module, norm in blocks:
        for h, t in attention.items():
          kernel(f"{hf}.{index}.{hf_module}.{h}.weight", f"{t5x}/{t5x_module}/{t}/kernel")
        out[f"{t5x}/{norm}/scale"] = state_dict[f"{hf}.{index}.layer_norm.weight"]
      for name in mlp:
        kernel(f"{hf}.{mlp_block}.DenseReluDense.{name}.weight", f"{t5x}/mlp/{name}/kernel")
      out[f"{t5x}/pre_mlp_layer_norm/scale"] = state_dict[f"{hf}.{mlp_block}.layer_norm.weight"]
  if not tied:
    kernel("lm_head.weight", "decoder/logits_dense/kernel")
  return out


# ----------------------------------------------------------------- state


def _sorted_tree(flat: Mapping[str, object]) -> dict:
  """{"a/b": x} -> {"a": {"b": x}}, keys sorted at every level as T5X's are."""
  tree: dict = {}
  for name in sorted(flat):
    node = tree
    *parents, leaf = name.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = flat[name]

  def sort(node):
    return {k: sort(node[k]) for k in sorted(node)} if isinstance(node, dict) else node
  return sort(tree)


def _adafactor_state(params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """T5X Adafactor slots (no momentum, unfactored) of every parameter, flat."""
  out = {}
  for name, p in params.items():
    if p.ndim >= 2 and sorted(p.shape)[-2] >= _MIN_DIM_SIZE_TO_FACTOR:
      raise ValueError(f"{name} {p.shape} would be factored by T5X's Adafactor; "
                       "this test writer only writes unfactored slots")
    placeholder = np.zeros((1,), np.float32)
    out.update({f"{name}/m": placeholder, f"{name}/v": np.square(p).astype(np.float32),
                f"{name}/v_col": placeholder, f"{name}/v_row": placeholder})
  return out


def _full_state(params: Mapping[str, np.ndarray], step: int) -> dict[str, np.ndarray]:
  """Flat T5X train state: target/..., state/param_states/..., state/step."""
  flat = {f"target/{n}": np.asarray(p) for n, p in params.items()}
  flat.update({f"state/param_states/{n}": a for n, a in _adafactor_state(params).items()})
  flat["state/step"] = np.asarray(step, np.int32)
  return flat


def _is_inline(name: str, array: np.ndarray) -> bool:
  """T5X keeps leaves without partitioning axes in the msgpack file itself:
  the step and Adafactor's unused (1,) slots."""
  return name == "state/step" or (
      name.startswith("state/param_states/") and name.rsplit("/", 1)[1] != "v"
      and array.shape == (1,))


# --------------------------------------------------------------- writers


def write_classic(model_dir: pathlib.Path, params: Mapping[str, np.ndarray],
                  step: int) -> pathlib.Path:
  """T5X's classic msgpack + zarr checkpoint of `params` (flat T5X names)."""
  directory = pathlib.Path(model_dir) / f"checkpoint_{step}"
  directory.mkdir(parents=True)
  leaves = {}
  for name, array in _full_state(params, step).items():
    if _is_inline(name, array):
      leaves[name] = array
      continue
    folder = name.replace("/", ".")
    dtype = np.dtype(array.dtype).name
    metadata = {"chunks": list(array.shape), "compressor": dict(_GZIP),
                "shape": list(array.shape)}
    store = ts.open({"driver": "zarr", "dtype": dtype,
                     "kvstore": {"driver": "file", "path": str(directory / folder)},
                     "metadata": metadata}, create=True).result()
    store.write(array).result()
    leaves[name] = {"driver": "zarr", "dtype": dtype,
                    "kvstore": {"driver": "file", "path": f"{folder}/"},
                    "metadata": metadata}
  tree = _sorted_tree(leaves)
  payload = {"version": MSGPACK_VERSION, "optimizer": tree}
  # in_place keeps the key order (T5X writes "version" first).
  (directory / "checkpoint").write_bytes(
      flax.serialization.msgpack_serialize(payload, in_place=True))
  return directory


def write_orbax(model_dir: pathlib.Path, params: Mapping[str, np.ndarray],
                step: int) -> pathlib.Path:
  """T5X's Orbax checkpoint (`checkpoint_<step>/state`, OCDBT) of `params`."""
  tree = _sorted_tree({n: jnp.asarray(a) for n, a in _full_state(params, step).items()})
  options = ocp.CheckpointManagerOptions(step_prefix="checkpoint", create=True)
  with ocp.CheckpointManager(pathlib.Path(model_dir).absolute(), options=options,
                             item_names=("state",)) as manager:
    manager.save(step, args=ocp.args.Composite(state=ocp.args.PyTreeSave(tree)))
    manager.wait_until_finished()
  return pathlib.Path(model_dir) / f"checkpoint_{step}"
