"""A summarization endpoint, an application beside `summarization`: `led-flax serve`, or
`Server(model, ServeOptions(...)).run()`.

The HTTP layer (`app`, Starlette on uvicorn) parses and checks requests (`requests`) and hands their
documents to the scheduler (`scheduler`), which owns the queue and batches them by length bucket and
static settings; the engine (`engine`) runs each batch on the devices with the rows' own numbers as
traced values, as `summarize` would. `metrics` holds the Prometheus metrics; `server` the process:
uvicorn, the device thread, and draining on SIGTERM.
"""

from .options import ServeOptions
from .requests import RequestError, SummarizeRequest
from .server import ServeError, Server

__all__ = ["ServeOptions", "ServeError", "Server", "RequestError", "SummarizeRequest"]
