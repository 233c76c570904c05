"""Derives the bundled sample corpus from a Swiss-Prot flat file.

  apt-get install emboss-test
  python scripts/derive_sample_corpus.py \
      --swissprot_dat=/usr/share/EMBOSS/test/swiss/seq.dat

Run once; its output is committed under prottrans_jax/data/sample/.
"""

from absl import app
from absl import flags

from prottrans_jax.data import sample_corpus
from prottrans_jax.data import swissprot

_DAT = flags.DEFINE_string("swissprot_dat",
                           "/usr/share/EMBOSS/test/swiss/seq.dat",
                           "Swiss-Prot flat file to read.")


def main(argv):
  del argv
  entries = list(swissprot.read_swissprot(_DAT.value))
  swissprot.write_fasta_and_annotations(entries, sample_corpus.FASTA_PATH,
                                        sample_corpus.ANNOTATIONS_PATH)
  print(f"wrote {len(entries)} entries to {sample_corpus.FASTA_PATH} and "
        f"{sample_corpus.ANNOTATIONS_PATH}")


if __name__ == "__main__":
  app.run(main)
