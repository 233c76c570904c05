"""Every gin file parses, in the combinations it is used in, and builds the
configuration it is meant to build.

Files are found by globbing `gin_utils.GIN_DIR`, so a new gin file is tested
as soon as it exists: `test_gin_file_belongs_to_a_combination` fails until
the tables below say what it is used with.
"""

import collections.abc
import dataclasses
import inspect
import re
import types
import typing

import gin
from gin import config as gin_config
import pytest

from prottrans_jax import families
from prottrans_jax import gin_utils
from prottrans_jax.models import albert
from prottrans_jax.models import bert
from prottrans_jax.models import electra
from prottrans_jax.models import t5
from prottrans_jax.models import xlnet
from prottrans_jax.models import transfo_xl
from prottrans_jax.training import aot
from prottrans_jax.training import finetune
from prottrans_jax.training import trainer

T5_RUNS = ("runs/pretrain.gin", "runs/finetune.gin")
BERT_RUNS = ("runs/pretrain_bert.gin",)
XLNET_RUNS = ("runs/pretrain_xlnet.gin",)
# Fine-tuning the model file's encoder with a task head (prottrans-finetune).
FINETUNE_RUNS = ("runs/finetune_per_residue.gin", "runs/finetune_per_protein.gin")
TXL_RUNS = ("runs/pretrain_txl.gin",)

# Model file -> (the config class it binds to trainer.train.model_config,
# the run files it is used with).
MODEL_FILES = {
    "models/prott5_tiny.gin": (t5.T5Config, T5_RUNS + ("runs/quickstart.gin",) + FINETUNE_RUNS),
    "models/prott5_xl.gin": (t5.T5Config, T5_RUNS + FINETUNE_RUNS),
    "models/prott5_xxl.gin": (t5.T5Config, T5_RUNS),
    "models/protbert.gin": (bert.BertConfig, BERT_RUNS),
    "models/protbert_bfd.gin": (bert.BertConfig, BERT_RUNS),
    "models/protbert_tiny.gin": (bert.BertConfig, BERT_RUNS + FINETUNE_RUNS),
    "models/protalbert.gin": (albert.AlbertConfig, BERT_RUNS),
    "models/protalbert_tiny.gin": (albert.AlbertConfig, BERT_RUNS + FINETUNE_RUNS),
    "models/protelectra.gin": (electra.ElectraPretrainingConfig, BERT_RUNS),
    "models/protelectra_tiny.gin": (electra.ElectraPretrainingConfig,
                                    BERT_RUNS + FINETUNE_RUNS),
    "models/protxlnet.gin": (xlnet.XLNetConfig, XLNET_RUNS),
    "models/protxlnet_tiny.gin": (xlnet.XLNetConfig, XLNET_RUNS),
    "models/prottxl.gin": (transfo_xl.TransfoXLConfig, TXL_RUNS),
    "models/prottxl_tiny.gin": (transfo_xl.TransfoXLConfig, TXL_RUNS),
}
# Family files: what the model files of a family share (each model file
# includes its family's, directly or through another model file, and
# overrides only what differs); no model on their own.
FAMILY_FILES = {
    "models/t5_family.gin": t5.T5Config,
    "models/bert_family.gin": bert.BertConfig,
    "models/albert_family.gin": albert.AlbertConfig,
    "models/electra_family.gin": electra.ElectraPretrainingConfig,
    "models/xlnet_family.gin": xlnet.XLNetConfig,
    "models/transfo_xl_family.gin": transfo_xl.TransfoXLConfig,
}
T5_FAMILY = "models/t5_family.gin"
# Pod files: a model file + run file and the TPU topology they are meant for
# (scripts/aot_compile.py compiles them for it; tests/test_aot_compile.py).
POD_FILES = {
    "pods/prott5_tiny_v4-8.gin": t5.T5Config,
    "pods/prott5_xl_v3-1024.gin": t5.T5Config,
    "pods/prott5_xl_v4-128.gin": t5.T5Config,
    "pods/prott5_xxl_v3-1024.gin": t5.T5Config,
    "pods/prott5_xxl_v4-256.gin": t5.T5Config,
    "pods/protbert_v3-512.gin": bert.BertConfig,
}
# Run files used without a model file (the model comes from the checkpoint).
STANDALONE_RUNS = ("runs/eval.gin",)
# What each run file leaves to the command line (`%gin.REQUIRED` macros).
REQUIRED_BINDINGS = {
    "runs/pretrain.gin": ("MODEL_DIR = '/tmp/unused'", "TRAIN_STEPS = 10"),
    "runs/finetune.gin": ("MODEL_DIR = '/tmp/unused'", "TRAIN_STEPS = 10"),
    "runs/pretrain_bert.gin": ("MODEL_DIR = '/tmp/unused'", "TRAIN_STEPS = 10"),
    "runs/pretrain_xlnet.gin": ("MODEL_DIR = '/tmp/unused'", "TRAIN_STEPS = 10"),
    "runs/pretrain_txl.gin": ("MODEL_DIR = '/tmp/unused'", "TRAIN_STEPS = 10"),
    "runs/quickstart.gin": (),
    "runs/eval.gin": ("MODEL_DIR = '/tmp/unused'",),
    **{run: ("MODEL_DIR = '/tmp/unused'", "INITIAL_CHECKPOINT_PATH = None")
       for run in FINETUNE_RUNS},
    **{pod: ("MODEL_DIR = '/tmp/unused'", "TRAIN_STEPS = 10")
       for pod in POD_FILES},
}
COMBINATIONS = ([(model, run) for model, (_, runs) in MODEL_FILES.items()
                 for run in runs] +
                [(run,) for run in STANDALONE_RUNS] +
                [(pod,) for pod in POD_FILES])


def _discovered() -> list[str]:
  return sorted(p.relative_to(gin_utils.GIN_DIR).as_posix()
                for p in gin_utils.GIN_DIR.rglob("*.gin"))


@pytest.fixture(autouse=True)
def _no_config_left_behind():
  yield
  gin.clear_config()


def _resolve(value):
  """A queried binding as the configured function would receive it:
  references called (`@f()`) or passed (`@f`), macros read."""
  if isinstance(value, gin_config.ConfigurableReference):
    fn = value.scoped_configurable_fn
    return fn() if value.evaluate else fn
  if isinstance(value, (list, tuple)):
    return type(value)(_resolve(v) for v in value)
  if isinstance(value, dict):
    return {k: _resolve(v) for k, v in value.items()}
  return value


def _bound_arguments(fn) -> dict[str, typing.Any]:
  """`fn`'s arguments that the parsed gin files bind, constructed."""
  bound = {}
  for name in inspect.signature(fn).parameters:
    try:
      value = gin.query_parameter(f"trainer.{fn.__name__}.{name}")
    except ValueError:
      continue  # not bound: the Python default applies
    bound[name] = _resolve(value)
  return bound


def _kind_errors(value, hint, where: str) -> list[str]:
  """Where `value` is not of the annotated kind `hint`, recursing into
  dataclasses and containers. float accepts an int; int never a bool."""
  if hint is typing.Any or isinstance(hint, typing.TypeVar):
    return []
  origin, args = typing.get_origin(hint), typing.get_args(hint)
  wrong = [f"{where} = {value!r} is not {hint}"]
  if origin in (typing.Union, types.UnionType):
    if any(not _kind_errors(value, option, where) for option in args):
      return []
    return wrong
  if origin is typing.Literal:
    return [] if value in args else wrong
  if origin is collections.abc.Callable or hint is collections.abc.Callable:
    return [] if callable(value) else wrong
  if origin is not None:  # tuple[int, int], Mapping[str, int], Sequence[...]
    if not isinstance(value, origin):
      return wrong
    if issubclass(origin, collections.abc.Mapping) and len(args) == 2:
      return [e for k, v in value.items()
              for e in (_kind_errors(k, args[0], f"{where} key") +
                        _kind_errors(v, args[1], f"{where}[{k!r}]"))]
    if origin is tuple and args and args[-1] is not Ellipsis:
      if len(value) != len(args):
        return wrong
      return [e for i, (v, a) in enumerate(zip(value, args))
              for e in _kind_errors(v, a, f"{where}[{i}]")]
    if len(args) == 1 or (origin is tuple and len(args) == 2):
      return [e for i, v in enumerate(value)
              for e in _kind_errors(v, args[0], f"{where}[{i}]")]
    return []
  if hint is type(None):
    return [] if value is None else wrong
  if hint in (int, float):
    kinds = (int,) if hint is int else (int, float)
    ok = isinstance(value, kinds) and not isinstance(value, bool)
    return [] if ok else wrong
  if not isinstance(hint, type):
    return []  # an annotation this check does not understand
  if not isinstance(value, hint):
    return wrong
  if dataclasses.is_dataclass(value):
    hints = typing.get_type_hints(type(value))
    return [e for f in dataclasses.fields(value)
            for e in _kind_errors(getattr(value, f.name), hints[f.name],
                                  f"{where}.{f.name}")]
  return []


def _arguments_of(fn, bound: dict[str, typing.Any]) -> list[str]:
  hints = typing.get_type_hints(fn)
  return [e for name, value in bound.items()
          for e in _kind_errors(value, hints[name], f"{fn.__name__}.{name}")]


def _dropout_rates(config) -> set[float]:
  if isinstance(config, electra.ElectraPretrainingConfig):
    return _dropout_rates(config.generator) | _dropout_rates(config.discriminator)
  if isinstance(config, t5.T5Config):
    return {config.dropout_rate}
  if isinstance(config, xlnet.XLNetConfig):
    return {config.dropout}
  if isinstance(config, transfo_xl.TransfoXLConfig):
    return {config.dropout, config.dropatt}
  return {config.hidden_dropout_prob, config.attention_probs_dropout_prob}


@pytest.mark.parametrize("path", _discovered())
def test_gin_file_belongs_to_a_combination(path):
  covered = {f for combination in COMBINATIONS for f in combination}
  covered |= set(FAMILY_FILES)
  assert path in covered, (
      f"{path} is in no combination of tests/test_gin_files.py: add it to "
      "MODEL_FILES, FAMILY_FILES, a model's runs or STANDALONE_RUNS")


def test_every_listed_gin_file_exists():
  listed = {f for combination in COMBINATIONS for f in combination}
  listed |= set(FAMILY_FILES)
  assert listed - set(_discovered()) == set()
  assert set(REQUIRED_BINDINGS) == {c[-1] for c in COMBINATIONS}


@pytest.mark.parametrize("files", COMBINATIONS, ids="+".join)
def test_combination_parses_and_builds_its_configuration(files):
  required = REQUIRED_BINDINGS[files[-1]]
  for left_out in required:  # each is needed, and the error names it
    macro = left_out.split("=")[0].strip()
    with pytest.raises(gin_utils.GinConfigError, match=f"macro {macro} is not set"):
      gin_utils.parse(files, [b for b in required if b != left_out])
  gin_utils.parse(files, required)  # finalizes, too
  if files[0] in POD_FILES:
    # The topology it names is one the ahead-of-time tool knows.
    aot.parse_topology(gin_utils.configured_arguments(
        aot.compile_train_step)["topology"])
  if files[-1] in FINETUNE_RUNS:
    # The model file's config is the encoder; the run file adds the head
    # and adapters, and binds everything a fine-tuning run needs.
    encoder = gin_utils.configured_arguments(trainer.train)["model_config"]
    assert type(encoder) is MODEL_FILES[files[0]][0]  # pylint: disable=unidiomatic-typecheck
    config = gin.get_configurable(finetune.make_config)(encoder_config=encoder)
    assert config.lora is not None and config.head.per_residue_output == (
        files[-1] == "runs/finetune_per_residue.gin")
    bound = gin_utils.configured_arguments(finetune.train)
    assert _arguments_of(finetune.train, bound) == []
    assert {"model_dir", "initial_checkpoint", "batch_size", "train_steps",
            "learning_rate", "optimizer", "partition"} <= set(bound)
  elif files[0] in MODEL_FILES or files[0] in POD_FILES:
    bound = _bound_arguments(trainer.train)
    config_class = (POD_FILES[files[0]] if files[0] in POD_FILES
                    else MODEL_FILES[files[0]][0])
    config = bound["model_config"]
    assert type(config) is config_class  # pylint: disable=unidiomatic-typecheck
    # The run file's DROPOUT_RATE overrides the model file's required one
    # and reaches every dropout probability of the network.
    assert _dropout_rates(config) == {gin.query_parameter("%DROPOUT_RATE")}
    assert _arguments_of(trainer.train, bound) == []
    # What a training run cannot do without (the rest have defaults).
    assert {"model_dir", "task_name", "task_feature_lengths", "batch_size",
            "train_steps", "learning_rate", "optimizer"} <= set(bound)
    if bound.get("carry_memory_between_steps"):
      # Each row must train as whole segments, one per step (else the run
      # fails when its step is built).
      objective = families.of(config).objective().between_steps
      objective.step_feature_lengths(bound["task_feature_lengths"], config)
  else:
    bound = _bound_arguments(trainer.evaluate)
    assert _arguments_of(trainer.evaluate, bound) == []
    assert {"model_dir", "task_name", "task_feature_lengths",
            "batch_size"} <= set(bound)


_INCLUDE = re.compile(r"^include\s+['\"](.+)['\"]", re.MULTILINE)


def _included(path: str) -> list[str]:
  """The files `path` includes, directly or not."""
  direct = _INCLUDE.findall((gin_utils.GIN_DIR / path).read_text())
  return [f for d in direct for f in [d] + _included(d)]


@pytest.mark.parametrize("model_file", sorted(MODEL_FILES))
def test_model_file_includes_the_family_file_of_its_config(model_file):
  families = [f for f in _included(model_file) if f in FAMILY_FILES]
  assert [FAMILY_FILES[f] for f in families] == [MODEL_FILES[model_file][0]]


@pytest.mark.parametrize("model_file", sorted(MODEL_FILES))
def test_model_file_overrides_its_base_in_under_15_lines(model_file):
  """A size file says only how this size differs from its base (T5X's
  small.gin is 13 lines): its bindings, not comments or scope headers."""
  text = (gin_utils.GIN_DIR / model_file).read_text()
  bindings = [line for line in text.splitlines()
              if "=" in line.split("#", 1)[0]]
  assert len(bindings) < 15, bindings


@pytest.mark.parametrize("family_file", sorted(FAMILY_FILES))
def test_family_file_alone_is_no_model(family_file):
  with pytest.raises(gin_utils.GinConfigError,
                     match="set to `%gin.REQUIRED` but not subsequently"):
    gin_utils.parse([family_file], ["DROPOUT_RATE = 0.0"])


# --- Model files build the networks they name. ------------------------------

# The Python presets (the sizes tests and bench/ build without gin) and the
# gin file that builds the same network: preset -> (gin file, the part of
# the built config that is the preset, fields that differ by design).
# By design, the tiny gin files compute in float32 (a CPU gains nothing from
# bfloat16); the presets keep the config classes' bfloat16 default and every
# test that uses them picks its dtype.
TINY = {"dtype": "float32"}
PRESETS_IN_GIN = {
    ("t5", "tiny"): ("models/prott5_tiny.gin", None, TINY),
    ("t5", "prott5_xl"): ("models/prott5_xl.gin", None, {}),
    ("t5", "prott5_xxl"): ("models/prott5_xxl.gin", None, {}),
    ("bert", "tiny"): ("models/protbert_tiny.gin", None, TINY),
    ("bert", "protbert"): ("models/protbert.gin", None, {}),
    ("albert", "tiny"): ("models/protalbert_tiny.gin", None, TINY),
    ("electra", "tiny_generator"): ("models/protelectra_tiny.gin", "generator", TINY),
    ("electra", "tiny_discriminator"): ("models/protelectra_tiny.gin", "discriminator",
                                        TINY),
    ("xlnet", "tiny"): ("models/protxlnet_tiny.gin", None, TINY),
    ("xlnet", "protxlnet"): ("models/protxlnet.gin", None, {}),
    ("transfo_xl", "tiny"): ("models/prottxl_tiny.gin", None, TINY),
}
PRESETS_WITHOUT_GIN = {
    ("t5", "base100m"): "bench/train_throughput.py's ~100M-parameter model",
}
PRESETS = {
    **{("t5", k): v for k, v in t5.T5_CONFIGS.items()},
    **{("bert", k): v for k, v in bert.BERT_CONFIGS.items()},
    **{("albert", k): v for k, v in albert.ALBERT_CONFIGS.items()},
    **{("electra", k): v for k, v in electra.ELECTRA_CONFIGS.items()},
    **{("xlnet", k): v for k, v in xlnet.XLNET_CONFIGS.items()},
    **{("transfo_xl", k): v for k, v in transfo_xl.TRANSFO_XL_CONFIGS.items()},
}


def _release_bert_like(cls, **sizes):
  return cls(vocab_size=30, max_position_embeddings=40000, dtype="bfloat16",
             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **sizes)


# Model files whose network has no Python preset, as built with the
# released models' DROPOUT_RATE (0.0): the configuration these files have
# built since they were written (pinned here so that a refactoring of the
# gin files cannot change it unnoticed).
PINNED = {
    "models/protbert_bfd.gin": _release_bert_like(
        bert.BertConfig, hidden_size=1024, num_hidden_layers=30,
        num_attention_heads=16, intermediate_size=4096, hidden_act="gelu",
        type_vocab_size=2, layer_norm_eps=1e-12),
    "models/protalbert.gin": _release_bert_like(
        albert.AlbertConfig, embedding_size=128, hidden_size=4096,
        num_hidden_layers=12, num_hidden_groups=1, num_attention_heads=64,
        intermediate_size=16384, hidden_act="gelu", layer_norm_eps=1e-12),
    "models/protelectra.gin": electra.ElectraPretrainingConfig(
        generator=_release_bert_like(
            electra.ElectraConfig, embedding_size=1024, hidden_size=256,
            num_hidden_layers=30, num_attention_heads=4, intermediate_size=1024),
        discriminator=_release_bert_like(
            electra.ElectraConfig, hidden_size=1024, num_hidden_layers=30,
            num_attention_heads=16, intermediate_size=4096),
        discriminator_weight=50.0),
    "models/prottxl.gin": transfo_xl.TransfoXLConfig(
        n_layer=32, d_model=1024, d_embed=1024, n_head=16, d_head=64, d_inner=4096,
        mem_len=512, segment_length=512, dropout=0.0, dropatt=0.0),
}


def _model_config(model_file: str, dropout_rate: float):
  """What `model_file` alone binds to trainer.train.model_config."""
  gin_utils.parse([model_file], [f"DROPOUT_RATE = {dropout_rate!r}"])
  return _bound_arguments(trainer.train)["model_config"]


def test_every_preset_is_compared_with_its_gin_file_or_has_none():
  assert set(PRESETS) == set(PRESETS_IN_GIN) | set(PRESETS_WITHOUT_GIN)
  assert not set(PRESETS_IN_GIN) & set(PRESETS_WITHOUT_GIN)


@pytest.mark.parametrize("preset", sorted(PRESETS_IN_GIN), ids="/".join)
def test_preset_equals_the_config_its_gin_file_builds(preset):
  model_file, part, by_design = PRESETS_IN_GIN[preset]
  expected = PRESETS[preset]
  (rate,) = _dropout_rates(expected)  # one macro sets them all
  built = _model_config(model_file, rate)
  if part:
    built = getattr(built, part)
  assert built == dataclasses.replace(expected, **by_design)


def test_every_model_file_is_compared_or_pinned():
  compared = {f for f, _, _ in PRESETS_IN_GIN.values()}
  assert set(MODEL_FILES) == compared | set(PINNED)


@pytest.mark.parametrize("model_file", sorted(PINNED))
def test_model_file_builds_its_pinned_config(model_file):
  assert _model_config(model_file, 0.0) == PINNED[model_file]


@pytest.mark.parametrize("model_file", sorted(MODEL_FILES))
def test_model_file_needs_no_run_file_but_its_dropout_rate(model_file):
  """A model file binds every field of its network but the dropout rate,
  which it leaves to the run file."""
  built = _model_config(model_file, 0.25)
  assert _dropout_rates(built) == {0.25}
  assert _kind_errors(built, MODEL_FILES[model_file][0], "model_config") == []
  with pytest.raises(gin_utils.GinConfigError, match="DROPOUT_RATE"):
    gin_utils.parse([model_file], [])


# --- Mistakes fail, naming what is wrong. -----------------------------------

TINY_T5_SIZES = """
t5.T5Config:
  d_model = 64
  d_kv = 16
  num_heads = 4
  d_ff = 128
  num_encoder_layers = 2
  num_decoder_layers = 2
"""


@pytest.mark.parametrize("mistake, message", [
    ("t5.T5Config.d_modle = 64", r"doesn't have a parameter named 'd_modle'"),
    ("t5.T5Config.dropout_rate = %DROPOUT_RAT", r"DROPOUT_RAT\b"),
    ("t5.T5Config.d_model = @t5.T5Konfig()", r"T5Konfig"),
])
def test_mistake_in_a_file_that_includes_a_family_file_is_a_gin_config_error(
    tmp_path, mistake, message):
  path = tmp_path / "mistake.gin"
  path.write_text(f"include '{T5_FAMILY}'\n{TINY_T5_SIZES}\n{mistake}\n")
  with pytest.raises(gin_utils.GinConfigError, match=message):
    gin_utils.parse([str(path)], ["DROPOUT_RATE = 0.1"])


def test_module_used_without_its_import_line_is_a_gin_config_error(tmp_path):
  """With dynamic registration gin raises NameError for a module the file
  never imports (easy to do in a new pod file); it must name the module."""
  path = tmp_path / "pod.gin"
  path.write_text("from __gin__ import dynamic_registration\n"
                  "import prottrans_jax.models.t5 as t5\n"
                  f"include '{T5_FAMILY}'\n{TINY_T5_SIZES}\n"
                  "partitioning.PartitionConfig.num_partitions = 2\n")
  with pytest.raises(gin_utils.GinConfigError,
                     match="'partitioning' was not provided by an import"):
    gin_utils.parse([str(path)], ["DROPOUT_RATE = 0.1"])


def test_value_of_the_wrong_kind_is_found(tmp_path):
  path = tmp_path / "wrong_kind.gin"
  path.write_text(f"include '{T5_FAMILY}'\n{TINY_T5_SIZES}\n"
                  "t5.T5Config.dropout_rate = '0.1'\n")
  gin_utils.parse([str(path)], ["DROPOUT_RATE = 0.1"])  # gin cannot tell
  built = _bound_arguments(trainer.train)["model_config"]
  assert _kind_errors(built, t5.T5Config, "model_config") == [
      "model_config.dropout_rate = '0.1' is not <class 'float'>"]


def test_a_size_of_the_wrong_kind_is_refused_when_the_config_is_built(
    tmp_path):
  path = tmp_path / "wrong_kind.gin"
  path.write_text(f"include '{T5_FAMILY}'\n{TINY_T5_SIZES}\n"
                  "t5.T5Config.d_ff = '128'\n")
  gin_utils.parse([str(path)], ["DROPOUT_RATE = 0.1"])
  with pytest.raises(ValueError, match=r"T5Config.d_ff must be an integer "
                     r">= 1, got '128'"):
    _bound_arguments(trainer.train)


# --- Where gin files are found. ---------------------------------------------


def test_gin_files_are_found_from_any_directory_by_either_spelling(
    tmp_path, monkeypatch):
  """The gin files live in the package: the canonical `models/...` and the
  older `gin/models/...` both resolve outside the repository, and so do the
  `include` lines inside them."""
  monkeypatch.chdir(tmp_path)
  operative = []
  for prefix in ("", "gin/"):
    gin_utils.parse([f"{prefix}models/prott5_tiny.gin",
                     f"{prefix}runs/quickstart.gin"], [])
    operative.append(gin.config_str())
  assert operative[0] == operative[1]
  assert "t5.T5Config.d_model = 64" in operative[0]
  assert "TRAIN_STEPS = 300" in operative[0]  # from runs/quickstart.gin
  assert "SEED = 0" in operative[0]  # from runs/pretrain.gin, included
