"""Shared command-line plumbing for the commands: multi-process start-up,
the model a command reads and the embedding batch budget. Scripts stay a few lines: flags in, one
library call. No TensorFlow, seqio or gin here: the embedding and conversion
commands import this module (the gin entry point of training is
`gin_utils.run_gin_main`)."""

import dataclasses
from absl import flags
from absl import logging
from prottrans_jax import partitioning
from prottrans_jax.inference import engine
from prottrans_jax.inference import loading


@dataclasses.dataclass(frozen=True)
class DistributedFlags:
  coordinator_address: flags.FlagHolder
  num_processes: flags.FlagHolder
  process_id: flags.FlagHolder
  auto_distributed: flags.FlagHolder

  def initialize(self) -> None:
    """Joins the multi-process run: the one --coordinator_address names, or
    else the job the platform describes (SLURM, Open MPI, Cloud TPU VM)."""
    if self.coordinator_address.value:
      partitioning.initialize_distributed(self.coordinator_address.value,
                                          self.num_processes.value,
                                          self.process_id.value)
      return
    cluster = (partitioning.platform_cluster()
               if self.auto_distributed.value else None)
    if cluster is not None:
      logging.info("joining the %s job's processes (jax.distributed, "
                   "coordinator from the platform)", cluster)
      partitioning.initialize_distributed()


def define_distributed_flags() -> DistributedFlags:
  """--coordinator_address/--num_processes/--process_id (jax.distributed)
  and --auto_distributed."""
  return DistributedFlags(
      flags.DEFINE_string(
          "coordinator_address", None, "HOST:PORT of process 0, to run on "
          "several hosts (jax.distributed); every process gets the same "
          "flags but --process_id. Not needed where the platform describes "
          "the job (see --auto_distributed)."),
      flags.DEFINE_integer("num_processes", 1, "Processes in all."),
      flags.DEFINE_integer("process_id", 0, "This process's index."),
      flags.DEFINE_bool(
          "auto_distributed", True, "Without --coordinator_address, join "
          "the multi-process job the platform describes: a SLURM job step "
          "of several tasks (srun), an Open MPI launch (mpirun) or a Cloud "
          "TPU VM of a pod slice, where jax.distributed finds the "
          "coordinator itself. --noauto_distributed runs each process "
          "alone."))


@dataclasses.dataclass(frozen=True)
class ModelSourceFlags:
  """--checkpoint_dir or --hf_model_dir: the model a command reads."""
  checkpoint_dir: flags.FlagHolder
  hf_model_dir: flags.FlagHolder

  def load(self, settings: engine.EmbedSettings | None = None, *,
           whole_model: bool = False) -> loading.LoadedModel:
    """The model the flags name (`loading.from_checkpoint` / `from_hf`)."""
    if self.checkpoint_dir.value:
      return loading.from_checkpoint(self.checkpoint_dir.value, settings,
                                     whole_model=whole_model)
    return loading.from_hf(self.hf_model_dir.value, settings,
                           whole_model=whole_model)


def define_model_source_flags(hf_models: str, hf_where: str,
                              checkpoint_note: str = "") -> ModelSourceFlags:
  """--checkpoint_dir and --hf_model_dir, exactly one of them required.

  Args:
    hf_models: which Hugging Face models the command reads (help text).
    hf_where: where such a model may be (help text).
    checkpoint_note: what the command reads of a checkpoint (help text).
  """
  holders = ModelSourceFlags(
      flags.DEFINE_string(
          "checkpoint_dir", None, "This project's checkpoint: a MODEL_DIR "
          "(latest step) or a step dir, local or gs://."
          + (f" {checkpoint_note}" if checkpoint_note else "")),
      flags.DEFINE_string("hf_model_dir", None,
                          f"Hugging Face {hf_models}: {hf_where}"))
  flags.mark_flags_as_mutual_exclusive(["checkpoint_dir", "hf_model_dir"],
                                       required=True)
  return holders


MAX_TOKENS_HELP = (
    "Padded tokens per batch per data-parallel device (a batch holds up to "
    "this times the number of data-parallel devices): rows x the batch's "
    "padded length, counting every row's special tokens ([CLS], [SEP], "
    "</s>) and padding, not just residues. A protein longer than this still "
    "gets a batch of its own (one row per data-parallel device). A batch "
    "that runs out of device memory is retried in smaller pieces; raise it "
    "for speed, lower it if retries are frequent.")


class MaxTokensFlag:
  """--max_tokens, and --max_residues, its deprecated former name."""

  def __init__(self, max_tokens: flags.FlagHolder,
               max_residues: flags.FlagHolder):
    self.max_tokens = max_tokens
    self.max_residues = max_residues
    self._warned = False

  @property
  def value(self) -> int:
    """The budget; warns on stderr (once) if the former name was used."""
    if self.max_residues.value is None:
      return self.max_tokens.value
    if not self._warned:
      self._warned = True
      logging.warning("--max_residues is deprecated and will be removed: "
                      "use --max_tokens (the same number: padded tokens per "
                      "batch per device, special tokens included)")
    return self.max_residues.value


def define_max_tokens_flag(default: int, help_text: str = MAX_TOKENS_HELP,
                           flag_values: flags.FlagValues = flags.FLAGS
                           ) -> MaxTokensFlag:
  """--max_tokens (padded tokens per embedding batch per device) and its deprecated
  alias --max_residues; giving both is a usage error."""
  max_tokens = flags.DEFINE_integer("max_tokens", default, help_text,
                                    lower_bound=1, flag_values=flag_values)
  max_residues = flags.DEFINE_integer(
      "max_residues", None, "Deprecated: the former name of --max_tokens, "
      "which counts the same padded tokens (special tokens included).",
      lower_bound=1, flag_values=flag_values)

  def one_name(_):
    return not (flag_values["max_tokens"].present
                and flag_values["max_residues"].present)
  flags.register_multi_flags_validator(
      ["max_tokens", "max_residues"], one_name,
      message="give --max_tokens only: --max_residues is its deprecated "
      "former name", flag_values=flag_values)
  return MaxTokensFlag(max_tokens, max_residues)
