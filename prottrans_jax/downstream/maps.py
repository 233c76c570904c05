"""Embedding maps: per-protein embeddings projected to 2-D and coloured by
a label, like the ProtTrans paper's Figure 4 (t-SNE; UMAP when installed).
The PNG and its TSV may be written to a URL (`gs://...`, `prottrans_jax.fs`)."""

import csv
import importlib.util
import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # Files only; no display on servers.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
from sklearn import manifold

from prottrans_jax import fs
from prottrans_jax.downstream import features as features_lib
from prottrans_jax.downstream import readers

UNLABELLED = "(no label)"
METHOD_NAMES = {"tsne": "t-SNE", "umap": "UMAP"}


def available_methods() -> tuple[str, ...]:
  return ("tsne", "umap") if importlib.util.find_spec("umap") else ("tsne",)


def project(vectors: np.ndarray, method: str = "tsne", seed: int = 0
            ) -> np.ndarray:
  """(n, d) -> (n, 2)."""
  if method not in available_methods():
    raise ValueError(f"projection {method!r} is not available here; "
                     f"available: {available_methods()} (UMAP needs the "
                     "umap-learn package)")
  if len(vectors) < 3:
    raise ValueError(f"a map needs at least 3 proteins, got {len(vectors)}")
  if method == "umap":
    import umap  # pylint: disable=g-import-not-at-top
    return umap.UMAP(random_state=seed).fit_transform(vectors)
  # t-SNE requires perplexity < n; the paper's scale (thousands) uses 30.
  perplexity = min(30.0, (len(vectors) - 1) / 3)
  return manifold.TSNE(perplexity=perplexity, init="pca",
                       random_state=seed).fit_transform(vectors)


def label_names(proteins: Sequence[readers.LabeledProtein], task: str
                ) -> list[str]:
  """Each protein's class name for `task`, or UNLABELLED."""
  classes = readers.TASK_CLASSES[task]
  return [classes[int(p.labels[task])] if p.labels[task] != readers.IGNORE
          else UNLABELLED for p in proteins]


def plot(coords: np.ndarray, names: Sequence[str], path: str, title: str
         ) -> int:
  """Scatter plot, one colour per label; returns the number of points."""
  fig, ax = plt.subplots(figsize=(8, 6.5), dpi=120)
  points = 0
  groups = sorted(set(names), key=lambda n: (n == UNLABELLED, n))
  colours = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20")
  for i, name in enumerate(groups):
    chosen = np.asarray([n == name for n in names])
    colour = "lightgrey" if name == UNLABELLED else colours(i % colours.N)
    ax.scatter(coords[chosen, 0], coords[chosen, 1], s=12, color=colour,
               label=f"{name} ({chosen.sum()})", alpha=0.8, linewidths=0)
    points += int(chosen.sum())
  ax.set_title(title)
  ax.set_xticks([])
  ax.set_yticks([])
  ax.legend(fontsize=7, markerscale=1.5, loc="best", frameon=False)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return points


def embedding_map(proteins: Sequence[readers.LabeledProtein], source: str,
                  task: str, output_png: str, method: str = "tsne",
                  seed: int = 0) -> np.ndarray:
  """Projects the proteins' per-protein features, writes the PNG and, next
  to it, the coordinates (`<png stem>.tsv`: id, x, y, label). Returns the
  (n, 2) coordinates."""
  vectors = np.stack(features_lib.load_features(proteins, source,
                                                per_protein=True))
  coords = project(vectors, method, seed)
  names = label_names(proteins, task)
  if not fs.is_remote(output_png):
    fs.path(output_png).parent.mkdir(parents=True, exist_ok=True)
  what = ("residue compositions (one-hot means)"
          if source == features_lib.ONEHOT else "embeddings")
  title = (f"{METHOD_NAMES[method]} of {len(proteins)} per-protein {what}, "
           f"coloured by {task}")
  with fs.staged_output(output_png) as local:
    plot(coords, names, os.fspath(local), title)
  tsv_path = os.path.splitext(os.fspath(output_png))[0] + ".tsv"
  with fs.staged_output(tsv_path) as local, open(
      local, "w", encoding="utf-8", newline="") as handle:
    writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
    writer.writerow(["id", "x", "y", task])
    writer.writerows((p.id, f"{x:.4f}", f"{y:.4f}", n)
                     for p, (x, y), n in zip(proteins, coords, names))
  return coords
