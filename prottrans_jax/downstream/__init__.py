"""The paper's downstream predictors on embeddings.

readers      labelled sets: NetSurfP-2.0 CSV, DeepLoc FASTA, bundled sample
features     head inputs: HDF5 embeddings (per residue, or their mean), one-hot
models       secondary-structure CNN, localization FNN, light attention
trainer      Adam + early stopping on a validation split; batched inference
checkpoints  a trained head as an Orbax checkpoint with its config
metrics      Q3/Q8/Q10/Q2 with bootstrap standard errors over proteins
pipeline     read -> features -> train/save -> score, as single calls
predict      predictions for new FASTA as TSV/JSON
maps         t-SNE/UMAP maps of per-protein embeddings (PNG)
"""
