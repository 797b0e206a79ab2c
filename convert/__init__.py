"""Checkpoint conversion between transformers' LED and led-flax, an application of the core:
`led_flax.convert` once installed (the repository keeps it in `convert/`). The core never imports it."""

from .directories import Conversion, convert_checkpoint, export_checkpoint, to_hf_directory
from .hf import HeadInitialisedWarning, HFModel, HubError, fetch_from_hub, from_hf, read_state_dict, to_hf, to_state_dict
from .loader import load, resolve_source
from .table import TABLE, MappingError, rule_for

__all__ = ["from_hf", "HFModel", "to_hf", "load", "resolve_source", "convert_checkpoint", "export_checkpoint",
           "to_hf_directory", "Conversion", "read_state_dict", "to_state_dict", "rule_for", "TABLE", "MappingError",
           "HeadInitialisedWarning", "fetch_from_hub", "HubError"]
