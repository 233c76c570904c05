"""Mesh construction, rule priority and derived shardings (no model compile)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from prottrans_jax import partitioning
from prottrans_jax.training import optimizers


def nn_axes(names, rules):
  """Mesh axes per dimension of an array with these logical names."""
  spec = nn.logical_to_mesh_axes(names, rules)
  return tuple(spec) + (None,) * (len(names) - len(spec))


def test_mesh_from_num_partitions_and_explicit_shape():
  assert dict(partitioning.create_mesh(2).shape) == {"data": 4, "model": 2}
  assert dict(partitioning.create_mesh(mesh_shape=(1, 1)).shape) == {
      "data": 1, "model": 1}
  with pytest.raises(ValueError, match="does not divide"):
    partitioning.create_mesh(3)


def test_1d_rules_put_wide_dims_on_model_and_batch_on_data():
  rules = partitioning.logical_axis_rules(1)
  assert nn_axes(("embed", "mlp"), rules) == (None, "model")
  assert nn_axes(("vocab", "embed"), rules) == ("model", None)
  assert nn_axes(("heads", "relpos_buckets"), rules) == ("model", None)
  assert nn_axes(("batch", "length", "embed"), rules) == ("data", None, None)


def test_2d_rules_shard_weights_over_data_but_not_activations():
  rules = partitioning.logical_axis_rules(2)
  assert nn_axes(("embed", "mlp"), rules) == ("data", "model")
  # `batch` has priority over `embed` for the data axis.
  assert nn_axes(("batch", "length", "embed"), rules) == ("data", None, None)


def test_additional_rules_take_priority():
  rules = partitioning.logical_axis_rules(1, (("embed", "model"),))
  assert nn_axes(("embed", "mlp"), rules) == ("model", None)


def test_adafactor_state_follows_param_shardings():
  mesh = partitioning.create_mesh(mesh_shape=(2, 4))
  params = {"wi": jax.ShapeDtypeStruct((256, 512), jnp.float32),
            "scale": jax.ShapeDtypeStruct((256,), jnp.float32)}
  shardings = {
      "wi": jax.sharding.NamedSharding(mesh, P("data", "model")),
      "scale": jax.sharding.NamedSharding(mesh, P("data"))}
  state = jax.eval_shape(optimizers.adafactor().init, params)
  state_shardings = partitioning.optimizer_state_shardings(
      state, params, shardings, mesh)
  factored = state_shardings.inner_state[0]
  # optax drops the larger dim (512) for v_row and the other for v_col.
  assert state.inner_state[0].v_row["wi"].shape == (256,)
  assert factored.v_row["wi"].spec == P("data")
  assert factored.v_col["wi"].spec == P("model")
  assert factored.v["scale"].spec == P("data")
  assert state_shardings.hyperparams["learning_rate"].spec == P()


def test_global_batch_from_process_rows():
  mesh = partitioning.create_mesh(2)
  sharding = partitioning.batch_sharding(mesh, partitioning.RULES_1D)
  batch = {"tokens": np.arange(8 * 3).reshape(8, 3)}
  assert partitioning.process_batch_rows(sharding, 8) == slice(0, 8)
  arrays = partitioning.make_global_batch(batch, sharding)
  assert arrays["tokens"].sharding.spec == P("data", None)
  np.testing.assert_array_equal(np.asarray(arrays["tokens"]), batch["tokens"])
