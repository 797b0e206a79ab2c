"""What every layer shares and nothing in it depends on: atomic file writes and parameter trees as
flat `a/b/c` maps.

- `files`: `write_atomic`, `atomic_directory`, `writing` (a half-written file never replaces a good
  one), `WriteError` (a full or read-only disk, one line), the jsonl reader.
- `trees`: `flatten`, `unflatten`, `path_of`.
"""

from .files import WriteError, atomic_directory, jsonl_objects, write_atomic, writing
from .trees import flatten, non_finite, path_of, unflatten

__all__ = ["WriteError", "atomic_directory", "jsonl_objects", "write_atomic", "writing", "flatten", "non_finite", "path_of",
           "unflatten"]
