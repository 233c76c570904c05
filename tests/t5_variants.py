"""Test helper: tiny random Hugging Face T5 models of each variant, ProtT5 ids.

The variants, by (feed_forward_proj, tie_word_embeddings) as in
transformers' T5Config: T5 1.0 (ProtT5), its untied-output and gated-GELU
halves, and T5 1.1 (both).
"""
import numpy as np
import torch
import transformers

VARIANTS = {
    "t5_1_0": ("relu", True),
    "untied_relu": ("relu", False),
    "gated_gelu": ("gated-gelu", True),
    "t5_1_1": ("gated-gelu", False),
}

PROTT5_RESIDUES = "ALGVSREDTIPKFQNYMHWCXBOUZ"  # ids 3..27; eos 1, pad 0


def tokenize(sequence: str) -> list[int]:
  return [PROTT5_RESIDUES.index(c) + 3 for c in sequence] + [1]


def padded_batch(sequences: list[str]) -> np.ndarray:
  rows = [tokenize(s) for s in sequences]
  batch = np.zeros((len(rows), max(map(len, rows))), np.int32)
  for i, row in enumerate(rows):
    batch[i, :len(row)] = row
  return batch


def teacher_forcing(sequences: list[str], length: int) -> tuple[np.ndarray, np.ndarray]:
  """(decoder inputs, targets): the first `length` residues + eos, shifted
  right behind the start token 0 for the inputs."""
  targets = padded_batch([s[:length] for s in sequences])
  return np.pad(targets[:, :-1], [(0, 0), (1, 0)]), targets


def random_hf_t5(feed_forward_proj: str = "relu", tie_word_embeddings: bool = True, *,
                 num_decoder_layers: int = 2, seed: int = 0
                 ) -> transformers.T5ForConditionalGeneration:
  """A random tiny T5 (vocabulary 128, d_model 32, 4 heads of 8, d_ff 64).

  Norm scales are random too (HF initialises them to 1), so a mis-mapped
  norm shows. Untied, the output layer gets weights of its own: recent
  transformers tie `lm_head` to `shared` at construction whatever the
  config says, and only keep them apart when a checkpoint holds both. They
  are drawn with T5X's fan-in scale for `logits_dense` (std d_model**-0.5),
  which gives logits the size the tied path's rescale gives them (with HF's
  std 1 they are sqrt(d_model) times larger, and so is float32 rounding).
  """
  config = transformers.T5Config(
      vocab_size=128, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
      num_decoder_layers=num_decoder_layers, feed_forward_proj=feed_forward_proj,
      is_encoder_decoder=True, tie_word_embeddings=tie_word_embeddings,
      dropout_rate=0.0, decoder_start_token_id=0)
  torch.manual_seed(seed)
  model = transformers.T5ForConditionalGeneration(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layer_norm" in name:
        p.uniform_(0.5, 1.5)
    if not tie_word_embeddings:
      model.lm_head.weight = torch.nn.Parameter(
          torch.randn(config.vocab_size, config.d_model) * config.d_model**-0.5)
  assert (model.lm_head.weight is model.shared.weight) == tie_word_embeddings
  return model


def hf_encoder_output(model: transformers.T5ForConditionalGeneration,
                      tokens: np.ndarray) -> np.ndarray:
  """transformers' T5EncoderModel output with `model`'s weights."""
  encoder = transformers.T5EncoderModel(model.config).eval()
  missing, unexpected = encoder.load_state_dict(model.state_dict(), strict=False)
  assert not missing and all(k.startswith(("decoder.", "lm_head.")) for k in unexpected)
  with torch.no_grad():
    return encoder(input_ids=torch.tensor(tokens, dtype=torch.long),
                   attention_mask=torch.tensor(tokens > 0)).last_hidden_state.numpy()


def hf_logits(model: transformers.T5ForConditionalGeneration, inputs: np.ndarray,
              decoder_inputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """Teacher-forced logits of `model` (float32)."""
  with torch.no_grad():
    return model(
        input_ids=torch.tensor(inputs, dtype=torch.long),
        attention_mask=torch.tensor(inputs > 0),
        decoder_input_ids=torch.tensor(decoder_inputs, dtype=torch.long),
        decoder_attention_mask=torch.tensor(targets > 0)).logits.float().numpy()
