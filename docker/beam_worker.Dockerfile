# A Beam worker image for building the protein corpora (docs/corpora.md):
# Beam's Python SDK container with the pinned requirements and this package,
# for runners that take a custom container (Dataflow: --sdk_container_image;
# Flink, Spark: environment_type=DOCKER with environment_config=IMAGE).
#
# Build it from the repository root (the build context), and push it where
# the workers can pull it:
#   docker build -f docker/beam_worker.Dockerfile -t REGISTRY/prottrans-beam:TAG .
#   docker push REGISTRY/prottrans-beam:TAG
#
# The base image must match the launcher: the same Beam version as
# requirements.txt's apache-beam pin, and the same Python minor version as
# the process that runs scripts/prepare_corpus.py (Beam pickles the pipeline
# code there and unpickles it here).
ARG PYTHON_VERSION=3.11
ARG BEAM_VERSION=2.77.0
FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION}

WORKDIR /opt/prottrans_jax

# The dependencies first, so that a code change rebuilds only the last layer.
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

COPY pyproject.toml setup.py README.md LICENSE NOTICE ./
COPY tasks ./tasks
COPY prottrans_jax ./prottrans_jax
# Not editable: the workers must not depend on this source tree. The check
# fails the build if the package or its bundled sample did not install.
RUN pip install --no-cache-dir --no-deps . \
    && cd / && python -c "import os; from prottrans_jax.data import sample_corpus, tfds_builder; assert os.path.isfile(sample_corpus.FASTA_PATH)"

# The base image's ENTRYPOINT (/opt/apache/beam/boot, which starts the SDK
# worker) is kept: do not override it.
