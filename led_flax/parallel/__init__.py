"""How arrays split over devices, below the model: the logical axis names of parameters and
activations and the one table that maps them onto the (data, fsdp, sequence, tensor) mesh
(`sharding`), one document's encoder split along the mesh's `sequence` axis (`sequence`, whose
`length_unit` is the one rule for how inputs pad), and one job over several processes
(`distributed`: the options `train` and `summarize` share, and `jax.distributed` started from them).

It imports nothing of the model: the model names its axes with these rules, and the functions here
take a model object and call it.
"""

from .distributed import DistributedError, JobOptions, job_options
from .sequence import SEQUENCE_AXIS, check_length, devices_of, encode, length_unit, sharded_model
from .sharding import ShardingError, bytes_per_device, logical_axes, make_mesh, param_shardings

__all__ = ["DistributedError", "JobOptions", "job_options", "SEQUENCE_AXIS", "check_length", "devices_of", "encode", "length_unit", "sharded_model", "ShardingError",
           "bytes_per_device", "logical_axes", "make_mesh", "param_shardings"]
