"""Pre-training tasks: one per corpus and objective.

Names are `{corpus}_{objective}`:
- objectives: `prott5_denoise` (ProtT5), `protbert_mlm` (ProtBert,
  ProtAlbert, ProtElectra's generator), `protxlnet_plm` (ProtXLNet's
  permutation LM, K = 6; `protxlnet_plm_task` registers another K) and
  `prottxl_lm` (ProtTXL: the residues alone, each predicting the next);
- corpora: `uniref50`, `uniref100`, `bfd`, `custom` and
  `swissprot_sample_tfds`, read from the TFDS datasets that
  `scripts/prepare_corpus.py` builds (`protein_fasta/<corpus>`; point seqio
  at their data dir with `--tfds_data_dir` of scripts/train.py and eval.py,
  or `seqio.set_tfds_data_dir_override`), and `swissprot_sample` (bundled in
  the package: works with no setup, no data dir, no download).

Every task has "train" and "validation" splits, assigned by a hash of the
protein id (`prottrans_jax.data.splits`).
"""

import functools

import seqio
import tensorflow as tf

from prottrans_jax.data import fasta
from prottrans_jax.data import preprocessors
from prottrans_jax.data import sample_corpus
from prottrans_jax.data import splits
from prottrans_jax.data import tfds_builder
from prottrans_jax.data import vocabularies

TFDS_CORPORA = ("uniref50", "uniref100", "bfd", "custom")

PROTT5_OUTPUT_FEATURES = {
    "inputs": seqio.Feature(vocabularies.prott5(), add_eos=True),
    "targets": seqio.Feature(vocabularies.prott5(), add_eos=True),
}
# [CLS]/[SEP] are added by the preprocessors, so seqio adds no EOS.
PROTBERT_OUTPUT_FEATURES = {
    "inputs": seqio.Feature(vocabularies.protbert(), add_eos=False),
    "targets": seqio.Feature(vocabularies.protbert(), add_eos=False),
    "loss_weights": seqio.Feature(
        seqio.PassThroughVocabulary(size=2, eos_id=None), add_eos=False),
}

# ProtTXL reads residues only (ProtBert's ids, no special tokens).
PROTTXL_OUTPUT_FEATURES = {
    "targets": seqio.Feature(vocabularies.protbert(), add_eos=False),
}

PROTT5_PREPROCESSORS = (
    preprocessors.sequence_to_targets,
    functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
    functools.partial(preprocessors.crop_targets, reserved_tokens=1),
    preprocessors.prott5_denoise,
    seqio.preprocessors.append_eos_after_trim,
)
PROTBERT_PREPROCESSORS = (
    preprocessors.sequence_to_targets,
    functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
    functools.partial(preprocessors.crop_targets, reserved_tokens=2),
    preprocessors.add_cls_and_sep,
    preprocessors.bert_mask,
)
PROTTXL_PREPROCESSORS = (
    preprocessors.sequence_to_targets,
    functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
    functools.partial(preprocessors.crop_targets, reserved_tokens=0),
)


# The permutation LM: "inputs" is the framed protein, "targets" the predicted
# tokens (`preprocessors.permutation_lm` builds both, padded with `<pad>`).
PROTXLNET_OUTPUT_FEATURES = {
    "inputs": seqio.Feature(vocabularies.protxlnet(), add_eos=False),
    "targets": seqio.Feature(vocabularies.protxlnet(), add_eos=False),
}


def protxlnet_preprocessors(partial_prediction: float = preprocessors.PARTIAL_PREDICTION):
  return (
      functools.partial(preprocessors.sequence_to_targets, feature="inputs"),
      functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
      functools.partial(preprocessors.crop_targets, feature="inputs",
                        reserved_tokens=preprocessors.XLNET_SPECIAL_TOKENS),
      functools.partial(preprocessors.permutation_lm, partial_prediction=partial_prediction),
  )


def fasta_source(path: str, validation_fraction: float,
                 policy: fasta.FastaPolicy = fasta.FastaPolicy()
                 ) -> seqio.FunctionDataSource:
  """A data source over one small FASTA file read into memory.

  For corpora that do not fit in memory, build the TFDS dataset instead.
  """

  def dataset_fn(split: str, shuffle_files: bool, seed=None):
    del shuffle_files, seed  # One file; seqio shuffles examples itself.
    records = [r for r in fasta.read_fasta(path, policy)
               if splits.split_of(r.id, validation_fraction) == split]
    return tf.data.Dataset.from_tensor_slices({
        "id": [r.id for r in records],
        "sequence": [r.sequence for r in records],
    })

  return seqio.FunctionDataSource(
      dataset_fn, splits=(splits.TRAIN, splits.VALIDATION))


_SOURCES: dict[str, seqio.DataSource] = {}


def register_objectives(corpus: str, source: seqio.DataSource) -> None:
  """Registers `{corpus}_prott5_denoise`, `{corpus}_protbert_mlm`,
  `{corpus}_protxlnet_plm` and `{corpus}_prottxl_lm`."""
  _SOURCES[corpus] = source
  seqio.TaskRegistry.add(
      f"{corpus}_prott5_denoise", source=source,
      preprocessors=PROTT5_PREPROCESSORS,
      output_features=PROTT5_OUTPUT_FEATURES)
  seqio.TaskRegistry.add(
      f"{corpus}_protbert_mlm", source=source,
      preprocessors=PROTBERT_PREPROCESSORS,
      output_features=PROTBERT_OUTPUT_FEATURES)
  protxlnet_plm_task(corpus)
  seqio.TaskRegistry.add(
      f"{corpus}_prottxl_lm", source=source,
      preprocessors=PROTTXL_PREPROCESSORS,
      output_features=PROTTXL_OUTPUT_FEATURES)


def protxlnet_plm_task(corpus: str,
                       partial_prediction: float = preprocessors.PARTIAL_PREDICTION) -> str:
  """The name of `corpus`'s permutation-LM task predicting 1/K of each order
  (K = `partial_prediction`): `{corpus}_protxlnet_plm` for XLNet's K = 6,
  else `{corpus}_protxlnet_plm_k{K}`, registered on first use. A gin file
  sets K with `MIXTURE_OR_TASK_NAME = @protein.protxlnet_plm_task()` and
  `protein.protxlnet_plm_task.partial_prediction = ...`.
  """
  if corpus not in _SOURCES:
    raise ValueError(f"protxlnet_plm_task: no corpus {corpus!r} is registered "
                     f"(known: {', '.join(sorted(_SOURCES))})")
  name = f"{corpus}_protxlnet_plm"
  if partial_prediction != preprocessors.PARTIAL_PREDICTION:
    name += f"_k{partial_prediction:g}"
  if name not in seqio.TaskRegistry.names():
    seqio.TaskRegistry.add(
        name, source=_SOURCES[corpus],
        preprocessors=protxlnet_preprocessors(partial_prediction),
        output_features=PROTXLNET_OUTPUT_FEATURES)
  return name


def tfds_source(config: str) -> seqio.TfdsDataSource:
  """The `protein_fasta/<config>` TFDS dataset (built by prepare_corpus.py)."""
  return seqio.TfdsDataSource(tfds_name=tfds_builder.tfds_name(config),
                              splits=(splits.TRAIN, splits.VALIDATION))


for _corpus in TFDS_CORPORA:
  register_objectives(_corpus, tfds_source(_corpus))
# The bundled sample as TFDS builds it (`prepare_corpus.py --corpus
# swissprot_sample`): the same proteins and split as `swissprot_sample_*`.
register_objectives("swissprot_sample_tfds", tfds_source("swissprot_sample"))

# The same proteins and split as the TFDS `swissprot_sample` config, read
# straight from the package so that nothing needs preparing.
register_objectives(
    "swissprot_sample",
    fasta_source(sample_corpus.FASTA_PATH,
                 tfds_builder.CONFIGS["swissprot_sample"].validation_fraction))
