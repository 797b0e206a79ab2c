"""Checkpoint conversion between transformers' LED and led-flax (imports led_flax, never the reverse)."""

from .directories import Conversion, convert_checkpoint, export_checkpoint, to_hf_directory
from .hf import HeadInitialisedWarning, HubError, fetch_from_hub, from_hf, read_state_dict, to_hf, to_state_dict
from .loader import load, resolve_source
from .table import TABLE, MappingError, rule_for

__all__ = ["from_hf", "to_hf", "load", "resolve_source", "convert_checkpoint", "export_checkpoint",
           "to_hf_directory", "Conversion", "read_state_dict", "to_state_dict", "rule_for", "TABLE", "MappingError",
           "HeadInitialisedWarning", "fetch_from_hub", "HubError"]
