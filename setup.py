"""Lets Apache Beam ship this package to its workers (`--setup_file`).

Beam's stager builds a source distribution of the directory holding the
file it is given, with `python setup.py sdist` (or `python -m build --sdist
--no-isolation` where `build` is installed), and every worker pip-installs
that sdist before it runs the pipeline (docs/corpora.md). Everything about
the package, its modules and data files included, is declared in
pyproject.toml; this file only hands over to setuptools.
"""

import setuptools

setuptools.setup()
