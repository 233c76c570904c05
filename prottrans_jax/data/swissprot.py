"""Reader for the Swiss-Prot flat-file format (the `.dat` files UniProt ships).

Used to derive the bundled sample corpus and its annotations (subcellular
location, membrane topology, HELIX/STRAND/TURN features) from real entries.
Only the line types this project needs are parsed: ID, AC, DE, OS, KW, CC
(SUBCELLULAR LOCATION), FT and the sequence block.
"""

import dataclasses
import re
from typing import Iterator

# Secondary-structure feature keys and their 3-state DSSP class.
_SS_FEATURES = {"HELIX": "H", "STRAND": "E", "TURN": "C"}


@dataclasses.dataclass(frozen=True)
class SwissProtEntry:
  accession: str
  entry_name: str
  description: str
  organism: str
  sequence: str
  keywords: tuple[str, ...]
  subcellular_location: str  # First location of the CC block, "" if none.
  features: tuple[tuple[str, int, int], ...]  # (key, start, end), 1-based.

  def secondary_structure(self) -> str | None:
    """Per-residue H/E/C from HELIX/STRAND/TURN features; None without any."""
    spans = [f for f in self.features if f[0] in _SS_FEATURES]
    if not spans:
      return None
    states = ["C"] * len(self.sequence)
    for key, start, end in spans:
      for i in range(start - 1, min(end, len(states))):
        states[i] = _SS_FEATURES[key]
    return "".join(states)

  @property
  def is_membrane(self) -> bool:
    return ("Transmembrane" in self.keywords or
            any(key == "TRANSMEM" for key, _, _ in self.features))


def _first_location(cc_text: str) -> str:
  """'Cell membrane; Multi-pass membrane protein. ...' -> 'Cell membrane'."""
  text = re.sub(r"\{[^}]*\}|\([^)]*\)", "", cc_text)  # Evidence, notes.
  return text.split(".")[0].split(";")[0].split(",")[0].strip()


def read_swissprot(path: str) -> Iterator[SwissProtEntry]:
  """Streams entries from a Swiss-Prot flat file."""
  lines: list[str] = []
  with open(path, encoding="utf-8", errors="replace") as handle:
    for line in handle:
      if line.startswith("//"):
        yield _parse_entry(lines, path)
        lines = []
      else:
        lines.append(line.rstrip("\n"))
  if any(line.strip() for line in lines):
    raise ValueError(f"{path}: last entry is not closed by '//' (truncated?)")


def _parse_entry(lines: list[str], path: str) -> SwissProtEntry:
  fields: dict[str, list[str]] = {}
  sequence_lines = []
  in_sequence = False
  for line in lines:
    if in_sequence:
      sequence_lines.append(line)
      continue
    code, rest = line[:2], line[5:]
    if code == "SQ":
      in_sequence = True
    fields.setdefault(code, []).append(rest)
  if "ID" not in fields or "AC" not in fields:
    raise ValueError(f"{path}: entry without ID/AC lines: {lines[:1]}")
  entry_name = fields["ID"][0].split()[0]
  accession = fields["AC"][0].split(";")[0].strip()
  description = ""
  for de in fields.get("DE", []):
    match = re.match(r"\s*RecName: Full=([^;{]+)", de)
    if match:
      description = match.group(1).strip()
      break
  organism = " ".join(fields.get("OS", [])).rstrip(".")
  organism = re.sub(r"\s*\(.*$", "", organism).strip()
  keywords = tuple(
      k.strip().rstrip(".") for k in " ".join(fields.get("KW", [])).split(";")
      if k.strip())
  location = ""
  cc_lines = fields.get("CC", [])
  for i, cc in enumerate(cc_lines):
    if cc.startswith("-!- SUBCELLULAR LOCATION:"):
      block = [cc.split(":", 1)[1]]
      for more in cc_lines[i + 1:]:
        if more.startswith("-!-") or more.startswith("---"):
          break
        block.append(more)
      location = _first_location(" ".join(block))
      break
  features = []
  for ft in fields.get("FT", []):
    parts = ft.split()
    if len(parts) >= 3 and parts[1].isdigit() and parts[2].isdigit():
      features.append((parts[0], int(parts[1]), int(parts[2])))
  sequence = "".join("".join(sequence_lines).split())
  return SwissProtEntry(accession=accession, entry_name=entry_name,
                        description=description, organism=organism,
                        sequence=sequence, keywords=keywords,
                        subcellular_location=location,
                        features=tuple(features))


def write_fasta_and_annotations(entries: list[SwissProtEntry], fasta_path: str,
                                annotations_path: str) -> None:
  """Writes entries as FASTA (60 residues a line) plus a TSV of annotations.

  TSV columns: id, entry_name, length, location, membrane (M/S),
  secondary_structure (H/E/C per residue, or "" when the entry has none).
  """
  with open(fasta_path, "w") as fasta, open(annotations_path, "w") as tsv:
    tsv.write("id\tentry_name\tlength\tlocation\tmembrane\t"
              "secondary_structure\n")
    for e in entries:
      fasta.write(f">{e.accession} {e.entry_name} {e.description} "
                  f"OS={e.organism}\n")
      for i in range(0, len(e.sequence), 60):
        fasta.write(e.sequence[i:i + 60] + "\n")
      tsv.write(f"{e.accession}\t{e.entry_name}\t{len(e.sequence)}\t"
                f"{e.subcellular_location}\t{'M' if e.is_membrane else 'S'}\t"
                f"{e.secondary_structure() or ''}\n")
