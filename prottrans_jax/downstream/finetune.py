"""A pre-trained encoder with a downstream head, fine-tuned end to end.

The network is any family's encoder (`family.encode`: ProtT5's encoder,
ProtBert, ProtAlbert, ProtElectra) followed by a head of
`downstream/models.py` (the per-residue CNN, or per protein the mean-pooled
MLP or light attention). Its parameters are one tree:

  {"encoder": the family's encoder parameters, under its canonical names,
   "head": the head's,
   "lora": low-rank adapters of encoder kernels (models/lora.py), if any}

so the encoder part is exactly what a family checkpoint's encoder holds
(restored from one to start, and written back as one by `merged_encoder`).

Batches frame each protein as the family's released tokenizer does
(`family.tokenize`); `mask` marks the residue rows, where per-residue labels
sit; per-protein heads see the mean of those rows, as embeddings do.

TensorFlow-free (the merge command and embedding use it); the training loop
is prottrans_jax/training/finetune.py.
"""

import dataclasses
import logging
from typing import Any, ClassVar, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from prottrans_jax import families
from prottrans_jax.downstream import models as heads
from prottrans_jax.downstream import readers
from prottrans_jax.models import configs
from prottrans_jax.models import lora as lora_lib

logger = logging.getLogger(__name__)

MODEL_NAME = "finetune"  # The model_name its checkpoints record.
ENCODER, HEAD, LORA = "encoder", "head", "lora"


@dataclasses.dataclass(frozen=True)
class FinetuneConfig(configs.DictConfig):
  """Encoder family and config, head, and adapters (None: full fine-tuning).

  `head.input_dim` must be the encoder's width. `freeze_encoder` trains the
  head alone on the frozen encoder's output (the frozen-embedding baseline,
  end to end on the same step; no adapters then).
  """
  encoder_family: str
  encoder: Any
  head: heads.HeadConfig
  lora: lora_lib.LoraConfig | None = None
  freeze_encoder: bool = False
  # Not one family's network: checkpoints record this name and keep the
  # trees in the layout they train in (checkpoints.save).
  checkpoint_model_name: ClassVar[str] = MODEL_NAME

  def __post_init__(self):
    family = families.get(self.encoder_family)
    if family.name not in ENCODER_FAMILIES:
      raise ValueError(f"fine-tuning takes an encoder of {ENCODER_FAMILIES}, "
                       f"got {family.name!r}")
    if type(self.encoder) is not family.config_class:  # pylint: disable=unidiomatic-typecheck
      raise ValueError(f"encoder config {type(self.encoder).__name__} is not "
                       f"a {family.name} config ({family.config_class.__name__})")
    if self.freeze_encoder and self.lora is not None:
      raise ValueError("freeze_encoder trains the head alone: set lora to None")
    width = encoder_width(self.encoder)
    if self.head.input_dim != width:
      raise ValueError(f"head input_dim {self.head.input_dim} differs from "
                       f"the {family.name} encoder's width {width}")

  def to_dict(self) -> dict[str, Any]:
    return {"encoder_family": self.encoder_family,
            "encoder": self.encoder.to_dict(), "head": self.head.to_dict(),
            "lora": None if self.lora is None else self.lora.to_dict(),
            "freeze_encoder": self.freeze_encoder}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "FinetuneConfig":
    family = families.get(d["encoder_family"])
    return cls(encoder_family=family.name,
               encoder=family.config_class.from_dict(d["encoder"]),
               head=heads.HeadConfig.from_dict(d["head"]),
               lora=None if d.get("lora") is None
               else lora_lib.LoraConfig.from_dict(d["lora"]),
               freeze_encoder=bool(d.get("freeze_encoder", False)))


# Families whose `encode` is a protein encoder (electra_pretraining's joint
# network is fine-tuned as its discriminator, an `electra` checkpoint).
ENCODER_FAMILIES = ("t5", "bert", "albert", "electra")


def encoder_width(config: Any) -> int:
  return getattr(config, "d_model", None) or config.hidden_size


class FinetuneModel:
  """The network of a `FinetuneConfig`: init, forward, trainable split."""

  def __init__(self, config: FinetuneConfig):
    self.config = config
    self.family = families.get(config.encoder_family)
    self.encoder = self.family.module(config.encoder)
    self.head = heads.make_head(config.head)

  def init(self, rng: jax.Array) -> dict:
    """Boxed parameters (encoder and adapters carry logical axis names; the
    head's are small and replicate)."""
    encoder_rng, head_rng, lora_rng = jax.random.split(rng, 3)
    tokens = jnp.ones((1, 8), jnp.int32)
    boxed = {ENCODER: self.encoder.init(
        encoder_rng, tokens, method=self.family.encode)["params"]}
    c = self.config.head
    x = jnp.zeros((1, 8, c.input_dim)) if c.per_residue_input else jnp.zeros(
        (1, c.input_dim))
    boxed[HEAD] = self.head.init(head_rng, x, jnp.ones((1, 8)))["params"]
    if self.config.lora is not None:
      boxed[LORA] = lora_lib.init_adapters(boxed[ENCODER], self.config.lora,
                                           lora_rng)
    return boxed

  def trainable_mask(self, params: Any) -> dict:
    """True for what fine-tuning trains: everything without adapters; with
    them, the adapters, the head and `lora.trainable` (layer norms); with
    `freeze_encoder`, the head alone."""
    encoder = lora_lib.trainable_mask(params[ENCODER], self.config.lora)
    if self.config.freeze_encoder:
      encoder = jax.tree_util.tree_map(lambda _: False, encoder)
    mask = {ENCODER: encoder,
            HEAD: jax.tree_util.tree_map(lambda _: True, params[HEAD])}
    if LORA in params:
      mask[LORA] = jax.tree_util.tree_map(lambda _: True, params[LORA])
    return mask

  def effective_encoder(self, params: Mapping[str, Any]) -> Any:
    """The encoder parameters the network computes with (adapters added)."""
    if self.config.lora is None:
      return params[ENCODER]
    return lora_lib.apply(params[ENCODER], params[LORA], self.config.lora.scale)

  def hidden(self, params: Mapping[str, Any], tokens: jax.Array,
             dropout_rng: jax.Array | None = None) -> jax.Array:
    """[B, L] tokens -> the encoder's [B, L, d] output (float32)."""
    rngs = {} if dropout_rng is None else {"dropout": dropout_rng}
    return self.encoder.apply(
        {"params": self.effective_encoder(params)}, tokens,
        method=self.family.encode, enable_dropout=dropout_rng is not None,
        rngs=rngs).astype(jnp.float32)

  def __call__(self, params: Mapping[str, Any], tokens: jax.Array,
               mask: jax.Array, dropout_rng: jax.Array | None = None
               ) -> dict[str, jax.Array]:
    """{task: logits}: [B, L, classes] per residue, [B, classes] per protein
    ([B] predictions for a regression task)."""
    x = self.hidden(params, tokens, dropout_rng)
    mask = mask.astype(jnp.float32)
    train = dropout_rng is not None
    rngs = {"dropout": jax.random.fold_in(dropout_rng, 1)} if train else {}
    if not self.config.head.per_residue_input:
      x = jnp.sum(x * mask[..., None], axis=1) / jnp.maximum(
          jnp.sum(mask, axis=1, keepdims=True), 1.0)
    return self.head.apply({"params": params[HEAD]}, x, mask, train=train,
                           rngs=rngs)


def merged_encoder(config: FinetuneConfig, params: Mapping[str, Any]) -> Any:
  """The fine-tuned encoder as a plain parameter tree of its family
  (adapters folded into their kernels)."""
  return FinetuneModel(config).effective_encoder(params)


def encode_batch(family: families.ModelFamily,
                 proteins: Sequence[readers.LabeledProtein],
                 tasks: Sequence[str], max_length: int, per_residue: bool
                 ) -> dict[str, np.ndarray]:
  """Tokens, residue mask and labels of `proteins`, padded to `max_length`
  tokens; a protein whose framing exceeds it is cut to fit (labels with it),
  and per-residue labels sit on their residue's row."""
  n = len(proteins)
  batch = {"tokens": np.zeros((n, max_length), np.int32),
           "mask": np.zeros((n, max_length), np.int32)}
  for task in tasks:
    # Regression targets are real: NaN marks a missing one.
    missing, dtype = ((np.nan, np.float32) if task in readers.REGRESSION_TASKS
                      else (readers.IGNORE, np.int32))
    batch[task] = np.full((n, max_length) if per_residue else (n,), missing,
                          dtype)
  room = max_length - family.num_special_tokens
  if room < 1:
    raise ValueError(f"max_length {max_length} leaves no room for residues "
                     f"after {family.num_special_tokens} special tokens")
  first = family.first_residue_row
  for i, protein in enumerate(proteins):
    sequence = protein.sequence[:room]
    tokens = family.tokenize(sequence)
    batch["tokens"][i, :len(tokens)] = tokens
    batch["mask"][i, first:first + len(sequence)] = 1
    for task in tasks:
      labels = protein.labels.get(task)
      if labels is None:
        continue
      if per_residue:
        batch[task][i, first:first + len(sequence)] = labels[:room]
      else:
        batch[task][i] = labels
  return batch


def load_checkpoint(path: str) -> tuple[FinetuneConfig, Any]:
  """(config, params as host arrays) of a fine-tuning checkpoint: a
  MODEL_DIR (its latest step) or a step directory. Its arrays are checked
  against the step's integrity record (checkpoints.DamagedCheckpointError
  naming the step otherwise)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from prottrans_jax import checkpoints  # pylint: disable=g-import-not-at-top
  step_dir = checkpoints.step_directory(path)
  record = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(
      step_dir / checkpoints.MODEL_CONFIG)
  if record.get("model_name") != MODEL_NAME:
    raise ValueError(f"{step_dir} holds a {record.get('model_name')!r} model, "
                     f"not a fine-tuning ({MODEL_NAME}) checkpoint "
                     f"(prottrans-finetune writes those)")
  integrity = checkpoints.read_integrity(step_dir)
  checkpoints.check_items(step_dir, integrity, (checkpoints.PARAMS,))
  try:
    # Host arrays whatever devices wrote it: a run saved on a pod's mesh
    # merges on one CPU (Orbax would otherwise ask for the saved shardings).
    metadata = ocp.StandardCheckpointer().metadata(
        step_dir / checkpoints.PARAMS).item_metadata.tree
    params = ocp.Checkpointer(ocp.PyTreeCheckpointHandler()).restore(
        step_dir / checkpoints.PARAMS, args=ocp.args.PyTreeRestore(
            restore_args=jax.tree_util.tree_map(
                lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                metadata)))
  except Exception as e:  # pylint: disable=broad-except
    raise checkpoints.DamagedCheckpointError(
        step_dir, f"reading {checkpoints.PARAMS}/ failed: {e!r}") from e
  checkpoints.verify_arrays(step_dir, checkpoints.PARAMS, params, integrity)
  config = FinetuneConfig.from_dict(record["config"])
  if (config.lora is None) != (LORA not in params):
    raise checkpoints.DamagedCheckpointError(
        step_dir, f"its config {'has no' if config.lora is None else 'has'} "
        f"LoRA adapters but its {checkpoints.PARAMS}/ "
        f"{'holds' if LORA in params else 'lacks'} a {LORA!r} tree")
  return config, params


# Where a merged checkpoint's MODEL_DIR keeps the fine-tuned head.
HEAD_SUBDIR = "head"


class Merged(NamedTuple):
  """What `merge_checkpoint` wrote: the encoder's step directory and the
  head directory (None for a regression head, which prottrans-predict cannot
  run: it predicts classes)."""
  checkpoint: Any
  head: str | None


def merge_checkpoint(finetune_checkpoint: str, output_dir: str,
                     step: int = 0, overwrite: bool = False) -> Merged:
  """Writes the fine-tuned encoder (adapters folded into their kernels) as a
  params-only checkpoint of its own family in `output_dir` (a MODEL_DIR),
  what prottrans-embed --checkpoint_dir and prottrans-convert read like any
  converted checkpoint. The pre-training heads (T5's decoder, the MLM head)
  are not part of a fine-tuned network; the fine-tuned head is written
  beside the encoder as a trained head (`OUTPUT_DIR/head`, the format of
  prottrans-train-downstream's heads) that prottrans-predict runs on that
  encoder's embeddings: the head computes on the embedding rows of the
  residues (per-protein `mlp`: their mean), which are what the fine-tuned
  network gives it. A full fine-tuning run (no adapters) is written the
  same way. `output_dir` must hold no checkpoint or head unless `overwrite`
  (then they are replaced)."""
  from prottrans_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from prottrans_jax import fs  # pylint: disable=g-import-not-at-top
  config, params = load_checkpoint(finetune_checkpoint)
  finetune_checkpoint = str(checkpoints.step_directory(finetune_checkpoint))
  existing = fs.path(output_dir) / checkpoints.CHECKPOINTS_SUBDIR
  head_dir = fs.path(output_dir) / HEAD_SUBDIR
  taken = [d for d in (existing, head_dir) if d.exists() and any(d.iterdir())]
  if taken:
    if not overwrite:
      raise FileExistsError(
          f"--output_dir {output_dir} already holds checkpoints "
          f"({', '.join(map(str, taken))}); pass --overwrite to replace "
          f"them, or choose another directory")
    for directory in taken:
      directory.rmtree()
  encoder = jax.tree_util.tree_map(
      np.asarray, merged_encoder(config, jax.tree_util.tree_map(
          jnp.asarray, params)))
  family = families.get(config.encoder_family)
  step_dir = checkpoints.write_params_checkpoint(
      output_dir, family.to_canonical(config.encoder, encoder), config.encoder,
      step=step)
  return Merged(step_dir, write_head(output_dir, config, params[HEAD], step,
                                    finetune_checkpoint))


def write_head(output_dir: str, config: FinetuneConfig, head_params: Any,
               step: int, fine_tuned_from: str) -> str | None:
  """Saves a fine-tuned head as a trained head in OUTPUT_DIR/head (the
  encoder merged into OUTPUT_DIR gives its features); returns that
  directory, or None for a regression head (logged, not written)."""
  from prottrans_jax import fs  # pylint: disable=g-import-not-at-top
  from prottrans_jax.downstream import checkpoints as head_checkpoints  # pylint: disable=g-import-not-at-top
  if config.head.regression:
    logger.warning("%s: the regression head is not written (prottrans-"
                   "predict predicts classes); only the encoder is merged",
                   fine_tuned_from)
    return None
  head_dir = str(fs.path(output_dir) / HEAD_SUBDIR)
  # Every output the head was trained with: the fine-tuning checkpoint does
  # not record which tasks had labels (an untrained Q8 output is still what
  # the fine-tuned network computes).
  head_checkpoints.save_head(
      head_dir, config.head, jax.tree_util.tree_map(np.asarray, head_params),
      step, {"features": "embeddings", "tasks": list(config.head.tasks),
             "encoder_checkpoint": str(output_dir),
             "fine_tuned_from": str(fine_tuned_from)})
  return head_dir
