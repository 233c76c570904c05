"""The paper's light downstream predictors, in Flax.

- `SecondaryStructureCNN` (ProtTrans Methods): a convolution (window 7)
  compresses the per-residue embedding to 32 channels, ReLU, dropout 0.25;
  two convolutions (window 7) map those 32 channels to 3 (Q3) and 8 (Q8)
  states. For 1024-d input: 229,408 + 675 + 1,800 = 231,883 parameters.
- `ProteinMLP` (ProtTrans Methods): per-protein (mean-pooled) embedding ->
  32 hidden units, ReLU, dropout 0.25 -> 10 localization classes and 2
  membrane classes. For 1024-d input: 32,800 + 330 + 66 = 33,196.
- `LightAttention` (Stärk et al. 2021): two width-9 convolutions over the
  per-residue embedding give values and attention logits; attention-weighted
  sum and max over residues are concatenated, then the same 32-unit head.
  Stärk et al. put a BatchNorm in that head; it is left out here so every
  head is a pure function of its parameters (no running statistics).

Every head returns {task: logits}; padded residues are marked by `mask`.
A head with `regression` has one real output instead: per protein the
task "target" ([B] predictions), per residue (the CNN) the task
"residue_target" ([B, L]); both trained on the squared error.
"""

import dataclasses
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from prottrans_jax.downstream import readers

HeadKind = Literal["ss_cnn", "mlp", "light_attention"]


@dataclasses.dataclass(frozen=True)
class HeadConfig:
  """A head's architecture; saved with its checkpoint.

  Attributes:
    kind: "ss_cnn" (per residue), "mlp" (per protein, mean-pooled input) or
      "light_attention" (per protein, per-residue input).
    input_dim: embedding size (1024 for ProtT5-XL, 21 for one-hot).
    hidden: channels / units between input and outputs.
    kernel: convolution window of the CNN.
    attention_kernel: convolution window of light attention.
    dropout: rate after the hidden layer (and on light attention's values).
    regression: one real output instead of the classification tasks:
      task "target" per protein, "residue_target" per residue.
  """
  kind: HeadKind
  input_dim: int
  hidden: int = 32
  kernel: int = 7
  attention_kernel: int = 9
  dropout: float = 0.25
  regression: bool = False

  @property
  def tasks(self) -> tuple[str, ...]:
    if self.per_residue_output:
      return (readers.RESIDUE_REGRESSION_TASKS if self.regression
              else readers.RESIDUE_TASKS)
    return (readers.PROTEIN_REGRESSION_TASKS if self.regression
            else readers.PROTEIN_TASKS)

  @property
  def per_residue_output(self) -> bool:
    return self.kind == "ss_cnn"

  @property
  def per_residue_input(self) -> bool:
    return self.kind != "mlp"

  def to_dict(self) -> dict[str, object]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, record: dict[str, object]) -> "HeadConfig":
    return cls(**record)


def _num_outputs(task: str) -> int:
  """Classes of a classification task; 1 for a regression task."""
  if task in readers.REGRESSION_TASKS:
    return 1
  return len(readers.TASK_CLASSES[task])


def _protein_output(task: str, h: jax.Array) -> jax.Array:
  """Class logits [B, classes], or a regression task's [B] predictions."""
  out = nn.Dense(_num_outputs(task), name=task)(h)
  return out[..., 0] if task in readers.REGRESSION_TASKS else out


class SecondaryStructureCNN(nn.Module):
  config: HeadConfig

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, train: bool = False
               ) -> dict[str, jax.Array]:
    """x: [B, L, d]; mask: [B, L] (1 = residue). Returns [B, L, classes]
    ([B, L] for a regression task)."""
    c = self.config
    # Zero padding so the windows at a protein's end see what 'SAME'
    # padding shows them for an unpadded protein.
    x = x * mask[..., None]
    h = nn.relu(nn.Conv(c.hidden, (c.kernel,), padding="SAME",
                        name="compress")(x))
    h = nn.Dropout(c.dropout, deterministic=not train)(h) * mask[..., None]
    outputs = {task: nn.Conv(_num_outputs(task), (c.kernel,), padding="SAME",
                             name=task)(h) for task in c.tasks}
    return {task: out[..., 0] if task in readers.REGRESSION_TASKS else out
            for task, out in outputs.items()}


class _ProteinOutputs(nn.Module):
  """The shared per-protein head: hidden layer, ReLU, dropout, two outputs."""
  config: HeadConfig

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
    c = self.config
    h = nn.relu(nn.Dense(c.hidden, name="hidden")(x))
    h = nn.Dropout(c.dropout, deterministic=not train)(h)
    return {task: _protein_output(task, h) for task in c.tasks}


class ProteinMLP(nn.Module):
  config: HeadConfig

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None,
               train: bool = False) -> dict[str, jax.Array]:
    """x: [B, d] mean-pooled embeddings. Returns [B, classes] per task
    ([B] for a regression task)."""
    del mask  # Already pooled.
    return _ProteinOutputs(self.config, name="outputs")(x, train)


class LightAttention(nn.Module):
  config: HeadConfig

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, train: bool = False
               ) -> dict[str, jax.Array]:
    """x: [B, L, d]; mask: [B, L]. Returns [B, classes] per task."""
    c = self.config
    x = x * mask[..., None]
    values = nn.Conv(c.input_dim, (c.attention_kernel,), padding="SAME",
                     name="values")(x)
    values = nn.Dropout(c.dropout, deterministic=not train)(values)
    logits = nn.Conv(c.input_dim, (c.attention_kernel,), padding="SAME",
                     name="attention")(x)
    valid = mask[..., None] > 0
    # Softmax over residues per channel; padding gets no weight.
    weights = jax.nn.softmax(jnp.where(valid, logits, -1e9), axis=1)
    pooled = jnp.concatenate(
        [jnp.sum(values * weights, axis=1),
         jnp.max(jnp.where(valid, values, -1e9), axis=1)], axis=-1)
    return _ProteinOutputs(c, name="outputs")(pooled, train)


HEADS = {"ss_cnn": SecondaryStructureCNN, "mlp": ProteinMLP,
         "light_attention": LightAttention}


def make_head(config: HeadConfig) -> nn.Module:
  if config.kind not in HEADS:
    raise ValueError(f"unknown head kind {config.kind!r}; known: "
                     f"{sorted(HEADS)}")
  return HEADS[config.kind](config)


def init_params(config: HeadConfig, seed: int = 0) -> dict:
  """Fresh parameters (shapes do not depend on the length)."""
  length = 16
  if config.per_residue_input:
    x, mask = jnp.zeros((1, length, config.input_dim)), jnp.ones((1, length))
  else:
    x, mask = jnp.zeros((1, config.input_dim)), None
  return make_head(config).init(jax.random.key(seed), x, mask)["params"]


def count_params(params: dict) -> int:
  return sum(int(p.size) for p in jax.tree_util.tree_leaves(params))
