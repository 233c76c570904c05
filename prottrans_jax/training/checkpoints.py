"""Deprecated alias of `prottrans_jax.checkpoints` (kept for one release).

The checkpoint format is not part of training: conversion and embedding read
it without the trainer. Import `prottrans_jax.checkpoints` instead.
"""
import warnings

from prottrans_jax.checkpoints import *  # pylint: disable=wildcard-import,unused-wildcard-import

warnings.warn("prottrans_jax.training.checkpoints moved to prottrans_jax.checkpoints; "
              "the old name will be removed in the next release",
              DeprecationWarning, stacklevel=2)
