"""The bundled sample corpus: 100 real Swiss-Prot entries shipped in the repo.

They come from Debian's `emboss-test` package (EMBOSS's test copy of
Swiss-Prot, `/usr/share/EMBOSS/test/swiss/seq.dat`), derived once by
`scripts/derive_sample_corpus.py`. UniProtKB/Swiss-Prot data, CC BY 4.0
(The UniProt Consortium). It is what the README's main job and the tests that
must run without `../shared` use.
"""

import os

SAMPLE_DIR = os.path.join(os.path.dirname(__file__), "sample")
FASTA_PATH = os.path.join(SAMPLE_DIR, "swissprot_sample.fasta")
ANNOTATIONS_PATH = os.path.join(SAMPLE_DIR, "swissprot_sample_annotations.tsv")
