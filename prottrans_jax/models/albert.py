"""ALBERT as ProtAlbert used it: a BERT encoder with a factorized embedding
and layer weights shared across layers (`bert.Bert` runs it).

`embedding_size`-wide tables are projected to `hidden_size` before the
first layer (Hugging Face's `embedding_hidden_mapping_in`); the
`num_hidden_layers` layers cycle through `num_hidden_groups` weight sets
(ProtAlbert: one set used 12 times). The MLM head maps back into embedding
space before the tied output embedding.
"""
import dataclasses

from prottrans_jax.models import bert


@dataclasses.dataclass(frozen=True, kw_only=True)
class AlbertConfig(bert.BertConfig):
  """`BertConfig` plus ALBERT's factorization and sharing (HF's names)."""
  embedding_size: int = 128
  num_hidden_groups: int = 1

  def __post_init__(self):
    super().__post_init__()
    self.check_dimensions("embedding_size", "num_hidden_groups")
    if self.num_hidden_layers % self.num_hidden_groups:
      raise ValueError(f"num_hidden_layers {self.num_hidden_layers} is not a multiple "
                       f"of num_hidden_groups {self.num_hidden_groups}")

  @property
  def embedding_dim(self) -> int:
    return self.embedding_size

  @property
  def num_layer_weights(self) -> int:
    return self.num_hidden_groups


ALBERT_CONFIGS: dict[str, AlbertConfig] = {
    "tiny": AlbertConfig(vocab_size=30, embedding_size=16, hidden_size=64,
                         num_hidden_layers=3, num_attention_heads=4, intermediate_size=128,
                         max_position_embeddings=1024),
}
