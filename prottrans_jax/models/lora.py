"""Low-rank adapters (LoRA) as a transform of a parameter tree.

No layer knows about adapters: a network's kernels are found by name
(`LoraConfig.targets`, regular expressions over '/'-joined parameter paths,
by default the four attention projections `query`, `key`, `value`, `out`
that every family's `layers.MultiHeadAttention` names so), and the
effective kernel `W + scale * A @ B` is formed from the frozen `W` and the
trainable `A` [.., in, rank], `B` [.., rank, out] just before the network is
applied (`apply`). Under `jax.grad` of the adapters alone, no gradient of a
frozen weight is ever formed and the optimizer never sees one.

Scanned layer stacks ([layers, in, out] kernels) get stacked adapters with
the same leading axes. Each adapter carries its kernel's logical axis names,
the rank axis named `lora_rank` (replicated by partitioning's named rule),
so A shards like its kernel's input side and B like its output side.

`merge` folds the adapters into the kernels: the result is an ordinary
parameter tree of the base family (what prottrans-merge-lora writes).

This lives in `models` (not `training`) because merging, embedding and
conversion use it without the training stack.
"""

import dataclasses
import math
import re
from typing import Any, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from prottrans_jax.models import configs

RANK_AXIS = "lora_rank"
A, B = "lora_a", "lora_b"

# The attention projections of every family (models/layers.py names them).
ATTENTION_TARGETS = (r"(^|/)attention/(query|key|value|out)/kernel$",)
# Optionally the feed-forward too (T5's wi or gated wi_0/wi_1, and wo).
MLP_TARGETS = (r"(^|/)mlp/(wi|wi_0|wi_1|wo)/kernel$",)
# Trained alongside the adapters, as the ProtTrans LoRA notebooks do:
# every layer norm (T5's RMS norm scales; BERT's scale and bias).
LAYER_NORM_PATTERNS = (r"(layer_norm|_norm|LayerNorm)[^/]*/(scale|bias)$",)


@dataclasses.dataclass(frozen=True)
class LoraConfig(configs.DictConfig):
  """Which kernels get adapters, and their size.

  Attributes:
    rank: r, the adapters' inner dimension.
    alpha: the update is scaled by alpha / rank (LoRA's convention, so that
      changing the rank does not change the initial step size).
    targets: regular expressions (re.search) over '/'-joined parameter
      paths of the kernels that get adapters.
    trainable: further parameters trained with the adapters (patterns, as
      `targets`); default the layer norms.
  """
  rank: int = 4
  alpha: float = 4.0
  targets: tuple[str, ...] = ATTENTION_TARGETS
  trainable: tuple[str, ...] = LAYER_NORM_PATTERNS

  def __post_init__(self):
    self.check_dimensions("rank")
    # Gin and JSON give lists; the config is hashable (a jit static).
    object.__setattr__(self, "targets", tuple(self.targets))
    object.__setattr__(self, "trainable", tuple(self.trainable))
    if not self.targets:
      raise ValueError("LoraConfig.targets is empty: no kernel would get an "
                       "adapter")
    for pattern in self.targets + self.trainable:
      re.compile(pattern)

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


def _path(key_path: tuple[str, ...]) -> str:
  return "/".join(key_path)


def _matches(patterns: tuple[str, ...], path: str) -> bool:
  return any(re.search(p, path) for p in patterns)


def _unboxed(x: Any) -> Any:
  return x.value if isinstance(x, nn.meta.AxisMetadata) else x


def target_paths(params: Any, config: LoraConfig) -> list[tuple[str, ...]]:
  """Paths of the kernels `config` targets in `params` (boxed or not);
  none is an error naming the patterns."""
  flat = flax.traverse_util.flatten_dict(
      nn.meta.unbox(params) if _boxed(params) else params)
  found = [k for k in flat if _matches(config.targets, _path(k))]
  if not found:
    raise ValueError(
        f"LoRA targets {config.targets} match no parameter; kernels look "
        f"like {_path(next(k for k in flat if k[-1] == 'kernel'))}")
  return sorted(found)


def _boxed(tree: Any) -> bool:
  return any(isinstance(x, nn.meta.AxisMetadata) for x in jax.tree_util.tree_leaves(
      tree, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata)))


def init_adapters(boxed_params: Any, config: LoraConfig, rng: jax.Array
                  ) -> dict:
  """Boxed adapters for the targeted kernels of `boxed_params` (a family's
  `init` output): {kernel's parent path: {"lora_a", "lora_b"}}.

  A is drawn with variance 1/in (as a fresh kernel), B is zero, so the
  adapted network starts as the pre-trained one.
  """
  flat = flax.traverse_util.flatten_dict(boxed_params)
  adapters = {}
  for i, key in enumerate(target_paths(boxed_params, config)):
    kernel = flat[key]
    names = kernel.names if isinstance(kernel, nn.LogicallyPartitioned) else (
        (None,) * _unboxed(kernel).ndim)
    value = _unboxed(kernel)
    lead, (fan_in, fan_out) = value.shape[:-2], value.shape[-2:]
    a = jax.random.normal(jax.random.fold_in(rng, i), lead + (fan_in, config.rank),
                          value.dtype) / math.sqrt(fan_in)
    b = jnp.zeros(lead + (config.rank, fan_out), value.dtype)
    parent = key[:-1]
    adapters[parent + (A,)] = nn.LogicallyPartitioned(
        a, names[:-1] + (RANK_AXIS,))
    adapters[parent + (B,)] = nn.LogicallyPartitioned(
        b, names[:-2] + (RANK_AXIS, names[-1]))
  return flax.traverse_util.unflatten_dict(adapters)


def num_adapter_params(params: Any, config: LoraConfig) -> int:
  """The formula: sum over targeted kernels [.., in, out] of
  prod(..) * rank * (in + out)."""
  flat = flax.traverse_util.flatten_dict(
      nn.meta.unbox(params) if _boxed(params) else params)
  total = 0
  for key in target_paths(params, config):
    shape = flat[key].shape
    total += math.prod(shape[:-2]) * config.rank * (shape[-2] + shape[-1])
  return total


def apply(params: Any, adapters: Any, scale: float) -> Any:
  """`params` with every adapted kernel W replaced by W + scale * A @ B
  (in W's dtype). Unboxed trees; works under jit and grad."""
  flat = flax.traverse_util.flatten_dict(params)
  flat_adapters = flax.traverse_util.flatten_dict(adapters)
  parents = {k[:-1] for k in flat_adapters}
  out = dict(flat)
  for parent in parents:
    key = parent + ("kernel",)
    if key not in flat:
      raise ValueError(f"adapter {_path(parent)} has no kernel "
                       f"{_path(key)} in the parameters")
    kernel = flat[key]
    delta = jnp.matmul(flat_adapters[parent + (A,)].astype(jnp.float32),
                       flat_adapters[parent + (B,)].astype(jnp.float32))
    out[key] = (kernel.astype(jnp.float32) + scale * delta).astype(kernel.dtype)
  return flax.traverse_util.unflatten_dict(out)


merge = apply  # Folding adapters in for good is the same sum, done once.


def trainable_mask(params: Any, config: LoraConfig | None) -> Any:
  """Bool tree like `params`: True where LoRA fine-tuning trains the base
  parameter (`config.trainable`); everything when `config` is None (full
  fine-tuning)."""
  flat = flax.traverse_util.flatten_dict(params)
  return flax.traverse_util.unflatten_dict({
      k: config is None or _matches(config.trainable, _path(k))
      for k in flat})


def split(params: Any, mask: Any) -> tuple[dict, dict]:
  """(the leaves where `mask` is True, the others), each a nested dict."""
  flat = flax.traverse_util.flatten_dict(params)
  flat_mask = flax.traverse_util.flatten_dict(mask)
  chosen = {k: v for k, v in flat.items() if flat_mask[k]}
  rest = {k: v for k, v in flat.items() if not flat_mask[k]}
  return (flax.traverse_util.unflatten_dict(chosen),
          flax.traverse_util.unflatten_dict(rest))


def combine(*trees: Mapping) -> dict:
  """The union of disjoint nested dicts (`split`'s inverse)."""
  flat = {}
  for tree in trees:
    for k, v in flax.traverse_util.flatten_dict(tree).items():
      if k in flat:
        raise ValueError(f"parameter {_path(k)} is in two trees")
      flat[k] = v
  return flax.traverse_util.unflatten_dict(flat)
