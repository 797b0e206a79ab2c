"""Batch summarization, an application of the core: `summarize` sorts a corpus into length buckets
(`buckets`), pads each batch to a fixed size, shards it over the local devices, generates, and
writes the summaries atomically in input order; a run with an output file resumes from its progress
file (`progress`).
"""

from .batch import (DEFAULT_CACHE, InputWarning, NonFiniteWarning, SummarizeOptions, SummaryReport, check_output, describe_generation,
                    enable_compilation_cache, format_summaries, generation_settings, summarize)
from .buckets import bucket_for, default_buckets
from .progress import ResumeError, RunRecord

__all__ = ["DEFAULT_CACHE", "InputWarning", "NonFiniteWarning", "SummarizeOptions", "SummaryReport", "check_output",
           "describe_generation", "enable_compilation_cache", "format_summaries", "generation_settings", "summarize",
           "bucket_for", "default_buckets", "ResumeError", "RunRecord"]
