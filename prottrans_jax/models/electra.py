"""ELECTRA as ProtElectra used it: replaced-token detection with a generator.

One network (`bert.Bert` with an `ElectraConfig`) is what Hugging Face's
`ElectraModel` / `ElectraForMaskedLM` (the generator) /
`ElectraForPreTraining` (the discriminator) hold. Pre-training runs both at
once (`ElectraPretraining`): a small generator fills the masked positions
of a BERT-masked input with residues sampled from its MLM softmax, and the
discriminator, sharing the generator's embedding tables, says for every
token whether it was replaced. The loss is the generator's MLM loss plus
`discriminator_weight` (50, as in ELECTRA) times the discriminator's
per-token binary cross-entropy; no gradient flows through the sampling.
"""
import dataclasses
from typing import Any, Optional

from flax import linen as nn
import jax
import jax.numpy as jnp

from prottrans_jax.models import bert
from prottrans_jax.models import configs


@dataclasses.dataclass(frozen=True, kw_only=True)
class ElectraConfig(bert.BertConfig):
  """`BertConfig` plus ELECTRA's optional factorized embedding (HF's names).

  `embedding_size` None means the hidden size (no projection), as in the
  ProtElectra discriminator.
  """
  embedding_size: Optional[int] = None

  @property
  def embedding_dim(self) -> int:
    return self.embedding_size or self.hidden_size

  @property
  def mlm_activation(self) -> str:
    return "gelu"  # HF's ElectraGeneratorPredictions ignores hidden_act.


@dataclasses.dataclass(frozen=True, kw_only=True)
class ElectraPretrainingConfig(configs.DictConfig):
  """A generator and a discriminator trained together.

  Attributes:
    generator: the generator network (ELECTRA: about 1/4 of the
      discriminator's width, the same embedding width).
    discriminator: the discriminator network.
    discriminator_weight: lambda in gen_loss + lambda * disc_loss.
    num_special_tokens: ids below this ([PAD], [UNK], [CLS], [SEP], [MASK])
      are never sampled as replacements.
  """
  generator: ElectraConfig
  discriminator: ElectraConfig
  discriminator_weight: float = 50.0
  num_special_tokens: int = 5

  def __post_init__(self):
    g, d = self.generator, self.discriminator
    for name in ("embedding_dim", "vocab_size", "max_position_embeddings", "type_vocab_size"):
      if getattr(g, name) != getattr(d, name):
        raise ValueError(f"generator and discriminator share their embeddings, so their "
                         f"{name} must agree: {getattr(g, name)} != {getattr(d, name)}")

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "ElectraPretrainingConfig":
    nested = {k: ElectraConfig.from_dict(d[k]) for k in ("generator", "discriminator") if k in d}
    return super().from_dict({**d, **nested})

  @property
  def dtype(self) -> str:
    return self.discriminator.dtype

  def with_dtype(self, dtype: str) -> "ElectraPretrainingConfig":
    """Both networks computing in `dtype`."""
    return dataclasses.replace(self, generator=self.generator.with_dtype(dtype),
                               discriminator=self.discriminator.with_dtype(dtype))

  def attention_block(self, length: int) -> int:
    """The discriminator's (the network `encode` runs)."""
    return self.discriminator.attention_block(length)

  def with_blockwise_attention(self) -> "ElectraPretrainingConfig":
    """Both networks attending block by block."""
    return dataclasses.replace(
        self, generator=self.generator.with_blockwise_attention(),
        discriminator=self.discriminator.with_blockwise_attention())

  def with_layer_options(self, *, scan_layers: Optional[bool] = None,
                         remat_policy: Optional[str] = None,
                         scan_unroll: Optional[int] = None
                         ) -> "ElectraPretrainingConfig":
    """Both networks with these layer options (each may also be set on its
    own: gin's `generator/` and `discriminator/` scopes)."""
    options = {"scan_layers": scan_layers, "remat_policy": remat_policy,
               "scan_unroll": scan_unroll}
    return dataclasses.replace(
        self, generator=self.generator.with_layer_options(**options),
        discriminator=self.discriminator.with_layer_options(**options))


ELECTRA_CONFIGS: dict[str, ElectraConfig] = {
    "tiny_generator": ElectraConfig(embedding_size=64, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64,
                                    max_position_embeddings=1024),
    "tiny_discriminator": ElectraConfig(hidden_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, intermediate_size=128,
                                        max_position_embeddings=1024),
}


def flops_per_token(config: ElectraPretrainingConfig, length: int) -> float:
  """Training FLOPs per token: both networks, each as `bert.flops_per_token`."""
  return (bert.flops_per_token(config.generator, length)
          + bert.flops_per_token(config.discriminator, length))


class ElectraPretraining(nn.Module):
  """Generator + discriminator over one shared embedding.

  `__call__` needs an rng named "sample" (the generator's samples). `encode`
  is the discriminator's encoder, the network ELECTRA keeps.
  """
  config: ElectraPretrainingConfig

  def setup(self):
    cfg = self.config
    self.embedder = bert.Embeddings(cfg.discriminator)
    self.generator = bert.Encoder(cfg.generator, self.embedder)
    self.generator_head = bert.MlmHead(cfg.generator)
    self.discriminator = bert.Encoder(cfg.discriminator, self.embedder)
    self.discriminator_head = bert.DiscriminatorHead(cfg.discriminator)

  def encode(self, encoder_input_tokens: jax.Array,
             encoder_segment_ids: Optional[jax.Array] = None,
             encoder_positions: Optional[jax.Array] = None,
             enable_dropout: bool = False, output_hidden_states: bool = False
             ) -> jax.Array | tuple[jax.Array, ...]:
    """The discriminator's last hidden states [B, L, hidden_size] (with
    `output_hidden_states`, all of them: `bert.Encoder`)."""
    return self.discriminator(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                              not enable_dropout, output_hidden_states)

  def __call__(self, encoder_input_tokens: jax.Array, encoder_target_tokens: jax.Array,
               encoder_loss_weights: jax.Array,
               encoder_segment_ids: Optional[jax.Array] = None,
               encoder_positions: Optional[jax.Array] = None,
               enable_dropout: bool = False) -> dict[str, jax.Array]:
    """Generator logits, discriminator logits and which tokens were replaced.

    The masked positions are those with a loss weight (BERT masking's
    selection); the discriminator sees the original residue everywhere else.
    """
    deterministic = not enable_dropout
    hidden = self.generator(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                            deterministic)
    generator_logits = self.generator_head(hidden, self.embedder)
    special = jnp.arange(generator_logits.shape[-1]) < self.config.num_special_tokens
    sample_logits = jnp.where(special, -jnp.inf, jax.lax.stop_gradient(generator_logits))
    sampled = jax.random.categorical(self.make_rng("sample"), sample_logits, axis=-1)
    corrupted = jnp.where(encoder_loss_weights > 0, sampled, encoder_target_tokens)
    discriminator_logits = self.discriminator_head(self.discriminator(
        corrupted, encoder_segment_ids, encoder_positions, deterministic))
    return {"generator_logits": generator_logits,
            "discriminator_logits": discriminator_logits,
            "replaced": corrupted != encoder_target_tokens}


def discriminator_sums(logits: jax.Array, replaced: jax.Array,
                       valid: jax.Array) -> dict[str, jax.Array]:
  """Sums over real tokens: binary cross-entropy, correct guesses, replaced count.

  `replaced` (the labels) summed gives the all-original baseline: a
  detector that always answers "original" is right on valid - replaced.
  """
  valid = valid.astype(jnp.float32)
  labels = replaced.astype(jnp.float32)
  # log(1 + exp(-|x|)) form of the sigmoid cross-entropy: stable for any x.
  bce = jnp.maximum(logits, 0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits)))
  correct = (logits > 0) == replaced
  return {"bce": jnp.sum(bce * valid), "correct": jnp.sum(correct * valid),
          "replaced": jnp.sum(labels * valid), "tokens": jnp.sum(valid)}


def generator_params(params: dict[str, Any]) -> dict[str, Any]:
  """The generator of an `ElectraPretraining` tree as a `bert.Bert` tree
  (what HF's ElectraForMaskedLM holds)."""
  return {"embedder": params["embedder"], "encoder": params["generator"],
          "mlm_head": params["generator_head"]}


def discriminator_params(params: dict[str, Any]) -> dict[str, Any]:
  """The discriminator as a `bert.Bert` tree (HF's ElectraForPreTraining)."""
  return {"embedder": params["embedder"], "encoder": params["discriminator"],
          "discriminator_head": params["discriminator_head"]}
