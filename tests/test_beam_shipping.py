"""Shipping the package to Beam workers, and the Beam pipeline options.

The acceptance test: a DirectRunner pipeline in a fresh process that can
import prottrans_jax only from what `setup.py` ships (the sdist Beam's
stager builds for `--setup_file`, installed the way a worker installs it)
builds the sample corpus.
"""

import json
import os
import pathlib
import re
import subprocess
import sys
import sysconfig
import tarfile

import pytest
import tensorflow_datasets as tfds

from prottrans_jax.data import fasta
from prottrans_jax.data import sample_corpus
from prottrans_jax.data import splits
from prottrans_jax.data import tfds_builder

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "prepare_corpus.py"
SAMPLE = "swissprot_sample"

# Runs a script as __main__, then prints where every prottrans_jax module
# (and any editable-install finder) it imported came from.
_RUN_AND_REPORT_MODULES = """
import json, runpy, sys
script = sys.argv[1]
sys.argv = sys.argv[1:]
try:
  runpy.run_path(script, run_name="__main__")
finally:
  print("MODULES " + json.dumps({
      name: getattr(module, "__file__", None)
      for name, module in list(sys.modules.items())
      if name.split(".")[0] == "prottrans_jax" or "editable" in name}),
        flush=True)
"""


def _checkout_env() -> dict[str, str]:
  """The environment for running this checkout's scripts in a subprocess.

  The script's own directory, not the repository root, starts its sys.path,
  and an editable install may point at another checkout.
  """
  path = os.environ.get("PYTHONPATH")
  return {**os.environ,
          "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else "")}


# --- the sdist that `--setup_file` ships ---------------------------------


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> pathlib.Path:
  """The source distribution Beam builds from `--setup_file=setup.py`."""
  from apache_beam.runners.portability import stager  # pylint: disable=g-import-not-at-top
  out = tmp_path_factory.mktemp("sdist")
  # What Beam's stager runs for --setup_file: `python -m build --sdist
  # --no-isolation` if `build` is installed, else `python setup.py sdist`.
  return pathlib.Path(stager.Stager._build_setup_package(  # pylint: disable=protected-access
      str(ROOT / "setup.py"), str(out)))


def test_sdist_holds_the_modules_gin_files_and_sample(sdist):
  with tarfile.open(sdist) as tar:
    names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
  package = ROOT / "prottrans_jax"
  wanted = {
      path.relative_to(ROOT).as_posix()
      for path in [*package.rglob("*.py"), *package.rglob("*.gin"),
                   *(package / "data" / "sample").iterdir(),
                   *(ROOT / "tasks").rglob("*.py")]
      if path.is_file() and "__pycache__" not in path.parts}
  assert "prottrans_jax/data/sample/swissprot_sample.fasta" in wanted
  assert "prottrans_jax/gin/models/prott5_xl.gin" in wanted
  assert sorted(wanted - names) == []
  assert {"pyproject.toml", "setup.py", "LICENSE"} <= names


# --- the acceptance test -------------------------------------------------


def _expected_sample_splits() -> dict[str, dict[str, str]]:
  """{split: {id: sequence}} of the bundled FASTA, split by hash of the id."""
  fraction = tfds_builder.CONFIGS[SAMPLE].validation_fraction
  expected = {splits.TRAIN: {}, splits.VALIDATION: {}}
  for record in fasta.read_fasta(sample_corpus.FASTA_PATH):
    expected[splits.split_of(record.id, fraction)][record.id] = record.sequence
  return expected


def _worker_environment(tmp: pathlib.Path, site: pathlib.Path):
  """A Python with the dependencies but not this checkout, and its env.

  A fresh venv whose site-packages lists this venv's site-packages through a
  .pth line: the dependencies import, while that directory's own .pth files
  (among them the editable install's finder, which maps prottrans_jax to a
  checkout) are never run. The package is importable only from `site`.
  """
  venv = tmp / "worker_venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)],
                 check=True, timeout=120)
  python = venv / "bin" / "python"
  venv_site = subprocess.run(
      [str(python), "-c",
       "import sysconfig; print(sysconfig.get_path('purelib'))"],
      check=True, capture_output=True, text=True, timeout=60).stdout.strip()
  deps = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
  pathlib.Path(venv_site, "dependencies.pth").write_text(
      "".join(f"{d}\n" for d in sorted(deps)))
  home = tmp / "home"
  home.mkdir()
  env = {k: v for k, v in os.environ.items()
         if not k.startswith("PYTHON") and "proxy" not in k.lower()}
  env.update(
      PYTHONPATH=str(site),
      PYTHONNOUSERSITE="1",
      # DirectRunner first downloads its Prism binary into ~/.apache_beam and
      # falls back to the in-process runner when it cannot: an empty home and
      # a proxy that refuses every connection make that fall-back certain,
      # and the test downloads nothing.
      HOME=str(home),
      http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9",
      HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9",
      no_proxy="localhost,127.0.0.1", NO_PROXY="localhost,127.0.0.1")
  return python, env


def test_fresh_process_builds_the_sample_from_the_shipped_package(
    sdist, tmp_path):
  # Installed as a worker installs the staged sdist, but offline and into a
  # directory of its own.
  site = tmp_path / "site"
  subprocess.run(
      [sys.executable, "-m", "pip", "install", "--no-deps",
       "--no-build-isolation", "--no-index", "--no-cache-dir", "--quiet",
       "--target", str(site), str(sdist)],
      check=True, capture_output=True, text=True, timeout=300)
  python, env = _worker_environment(tmp_path, site)
  cwd = tmp_path / "cwd"  # Outside the repository.
  cwd.mkdir()

  # Without the install, the fresh process cannot import the package at all.
  no_site = subprocess.run(
      [str(python), "-c", "import prottrans_jax"], cwd=cwd,
      env={**env, "PYTHONPATH": ""}, capture_output=True, text=True,
      timeout=60)
  assert no_site.returncode != 0
  assert "No module named 'prottrans_jax'" in no_site.stderr

  data_dir = tmp_path / "tfds"
  result = subprocess.run(
      [str(python), "-c", _RUN_AND_REPORT_MODULES, str(SCRIPT),
       f"--corpus={SAMPLE}", f"--data_dir={data_dir}", "--beam",
       "--beam_runner=DirectRunner",
       # Both forms of the options, and values with commas: the runner
       # ignores these two, the script must pass them through whole.
       "--beam_pipeline_options=direct_num_workers=1,experiments=a,b",
       "--beam_pipeline_option=labels=team=proteins,corpus=sample"],
      cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-5000:]

  modules = json.loads(
      re.search(r"^MODULES (.*)$", result.stdout, re.MULTILINE)[1])
  assert "prottrans_jax.data.tfds_builder" in modules
  outside = {name: path for name, path in modules.items()
             if not (path and pathlib.Path(path).resolve().is_relative_to(
                 site.resolve()))}
  assert outside == {}, "imported from outside the shipped package"
  assert ("Beam pipeline options: ['direct_num_workers=1', "
          "'experiments=a,b', 'labels=team=proteins,corpus=sample']"
          in result.stderr)

  expected = _expected_sample_splits()
  assert sum(map(len, expected.values())) == 100
  for split, records in expected.items():
    assert f"{split}: {len(records)}" in result.stdout
  builder = tfds.builder_from_directory(
      str(data_dir / "protein_fasta" / SAMPLE / tfds_builder.VERSION))
  for split, records in expected.items():
    got = {ex["id"].decode(): ex["sequence"].decode()
           for ex in tfds.as_numpy(builder.as_dataset(split=split))}
    assert got == records
  # The records came from the sample installed with the package.
  fasta_files = builder.info.metadata["fasta_files"]
  assert [pathlib.Path(f).resolve().is_relative_to(site.resolve())
          for f in fasta_files] == [True]


# --- pipeline options ----------------------------------------------------


@pytest.mark.parametrize("text, options", [
    ("project=p,region=us-central1,temp_location=gs://b/tmp",
     ["project=p", "region=us-central1", "temp_location=gs://b/tmp"]),
    # A comma not followed by KEY= belongs to the value before it.
    ("project=p,experiments=a,b,region=r",
     ["project=p", "experiments=a,b", "region=r"]),
    ("--project=p,save_main_session,flink_master=HOST:8081",
     ["--project=p", "save_main_session", "flink_master=HOST:8081"]),
    ("direct_num_workers=16, direct_running_mode=multi_processing,",
     ["direct_num_workers=16", "direct_running_mode=multi_processing"]),
    ("", []),
])
def test_split_pipeline_options(text, options):
  assert tfds_builder.split_pipeline_options(text) == options


@pytest.mark.parametrize("text, bad", [
    ("project", "project"),  # Takes a value.
    ("gs://bucket/tmp,project=p", "gs://bucket/tmp"),
    ("save_main_session,oops", "oops"),  # A switch has no value to continue.
])
def test_malformed_option_is_named(text, bad, tmp_path):
  with pytest.raises(ValueError,
                     match=f"malformed Beam pipeline option {bad!r}"):
    tfds_builder.split_pipeline_options(text)
  with pytest.raises(ValueError, match=re.escape(repr(bad))):
    tfds_builder.build_corpus(SAMPLE, str(tmp_path), use_beam=True,
                              beam_options=[bad])
  assert not (tmp_path / "protein_fasta").exists()


def test_each_option_reaches_beam_whole():
  options = tfds_builder._pipeline_options([  # pylint: disable=protected-access
      "experiments=use_runner_v2,shuffle_mode=service",
      "--labels=team=proteins,corpus=uniref50", "save_main_session",
      "no_use_public_ips", "project=p"]).get_all_options(drop_default=True)
  # Beam itself splits experiments at the commas of its own list syntax.
  assert options["experiments"] == ["use_runner_v2", "shuffle_mode=service"]
  assert options["labels"] == ["team=proteins,corpus=uniref50"]
  assert options["save_main_session"] is True
  assert options["use_public_ips"] is False
  assert options["project"] == "p"


def test_no_options_do_not_read_the_command_line(monkeypatch):
  monkeypatch.setattr(sys, "argv", ["prepare_corpus.py", "--project=argv"])
  options = tfds_builder._pipeline_options(None)  # pylint: disable=protected-access
  assert "project" not in options.get_all_options(drop_default=True)


# --- which runs get the setup file ---------------------------------------


SETUP = f"setup_file={ROOT / 'setup.py'}"


@pytest.mark.parametrize("options, runner, shipped", [
    (["project=p"], "DataflowRunner", ["project=p", SETUP]),
    (["runner=DataflowRunner"], None, ["runner=DataflowRunner", SETUP]),
    (["flink_master=h:8081", "environment_type=DOCKER"], "FlinkRunner",
     ["flink_master=h:8081", "environment_type=DOCKER", SETUP]),
    (["environment_type=PROCESS"], "PrismRunner",
     ["environment_type=PROCESS", SETUP]),
    # Local workers import the launcher's package.
    (None, None, []),
    (["direct_num_workers=2"], "DirectRunner", ["direct_num_workers=2"]),
    (None, "FnApiRunner", []),
    (["environment_type=LOOPBACK"], "FlinkRunner",
     ["environment_type=LOOPBACK"]),
    # The user gives the package another way.
    (["sdk_container_image=r/img:1"], "DataflowRunner",
     ["sdk_container_image=r/img:1"]),
    (["environment_type=DOCKER", "environment_config=r/img:1"],
     "SparkRunner", ["environment_type=DOCKER", "environment_config=r/img:1"]),
    (["setup_file=/src/setup.py"], "DataflowRunner",
     ["setup_file=/src/setup.py"]),
    (["extra_package=dist/p.whl"], "DataflowRunner",
     ["extra_package=dist/p.whl"]),
])
def test_ship_package(options, runner, shipped):
  assert tfds_builder.ship_package(options, runner) == shipped


def test_ship_package_without_a_checkout_says_what_to_do(monkeypatch,
                                                         tmp_path):
  monkeypatch.setattr(tfds_builder, "_CHECKOUT", str(tmp_path))
  assert tfds_builder.package_setup_file() is None
  with pytest.raises(ValueError, match="DataflowRunner workers must import "
                     "prottrans_jax.*sdk_container_image"):
    tfds_builder.ship_package(["project=p"], "DataflowRunner")


@pytest.mark.parametrize("flag, bad", [
    ("--beam_pipeline_options=gs://b/tmp,direct_num_workers=1", "gs://b/tmp"),
    ("--beam_pipeline_option=temp_location", "temp_location"),
])
def test_script_names_a_malformed_option(tmp_path, flag, bad):
  result = subprocess.run(
      [sys.executable, str(SCRIPT), f"--corpus={SAMPLE}",
       f"--data_dir={tmp_path}", "--beam", "--beam_runner=DirectRunner", flag],
      capture_output=True, text=True, timeout=300, env=_checkout_env())
  assert result.returncode != 0
  assert f"malformed Beam pipeline option {bad!r}" in result.stderr
  assert not (tmp_path / "protein_fasta").exists()


def test_worker_image_matches_the_pinned_beam():
  dockerfile = (ROOT / "docker" / "beam_worker.Dockerfile").read_text()
  pinned = re.search(r"^apache-beam==(\S+)$",
                     (ROOT / "requirements.txt").read_text(), re.MULTILINE)[1]
  assert re.search(r"^ARG BEAM_VERSION=(\S+)$", dockerfile,
                   re.MULTILINE)[1] == pinned
  assert "FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION}" in (
      dockerfile)
