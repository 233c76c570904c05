"""Test-wide setup: 8 host CPU devices, so sharding is exercised for real.

XLA reads the device count when jax initialises its backend, so the flag must
be in the environment before anything imports jax.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  ).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  """`../shared/data`: real protein data that tests read but never copy."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"{SHARED_DATA} not present")
  return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_prott5_model_dir(tmp_path_factory) -> pathlib.Path:
  """A MODEL_DIR holding a params-only checkpoint (step 7) of a random tiny
  ProtT5, encoder and decoder."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from prottrans_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from prottrans_jax.models import t5  # pylint: disable=g-import-not-at-top
  config = t5.T5_CONFIGS["tiny"]
  # Jitted: op-by-op initialisation took 13-21 s of the session here.
  params = nn.unbox(jax.jit(t5.T5(config).init)(
      jax.random.key(1), jnp.ones((1, 8), jnp.int32),
      jnp.ones((1, 8), jnp.int32)))["params"]
  path = tmp_path_factory.mktemp("tiny_prott5")
  checkpoints.write_params_checkpoint(path, params, step=7, config=config)
  return path
