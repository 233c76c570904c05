"""The machine a benchmark ran on, as every benchmark's report names it.

Scripts in bench/ run as `python bench/<name>.py`, so this sits beside them
and is imported as `_machine`.
"""
import os
import platform
from typing import Sequence


def _cpuinfo() -> tuple[str, set[str]]:
  """/proc/cpuinfo's model name and flags of the first CPU; platform's
  processor (or machine) name and no flags where there is no such file."""
  name, present = "", set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name") and not name:
          name = line.split(":", 1)[1].strip()
        elif line.startswith("flags"):
          present = set(line.split(":", 1)[1].split())
          break
  except OSError:
    pass
  return name or platform.processor() or platform.machine(), present


def describe(vector_flags: Sequence[str] = ()) -> str:
  """"<CPU model>, <n> CPUs" (those this process may run on) and, for each
  of `vector_flags` (/proc/cpuinfo's names: avx2, avx512f, ...), whether
  the CPU has it."""
  name, present = _cpuinfo()
  marks = "".join(f", {flag} {'yes' if flag in present else 'no'}"
                  for flag in vector_flags)
  return f"{name}, {len(os.sched_getaffinity(0))} CPUs{marks}"
