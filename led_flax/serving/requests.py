"""A `POST /summarize` body, parsed and checked into a typed `SummarizeRequest`, in the form of
transformers' summarization pipeline and the HF Inference API:

    {"inputs": "text" | ["text", ...], "parameters": {"num_beams": 4, "max_length": 128, ...}}

`parameters` holds generation settings by transformers' names (over the checkpoint's
generation_config.json), `seed` (sampling: document j of the request draws from seed + j) and
`truncation` (true by default; false makes an over-long input an error). Anything else is refused
with a `RequestError` that names it: the HTTP layer answers with its status and JSON body.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
from typing import Any, Mapping

# the generation settings a request may set, and the JSON types each takes
_INTEGER = ("max_length", "max_new_tokens", "min_length", "num_beams", "no_repeat_ngram_size", "top_k")
_NUMBER = ("length_penalty", "repetition_penalty", "temperature", "top_p")
_FLAG = ("do_sample",)
GENERATION_PARAMETERS = _INTEGER + _NUMBER + _FLAG + ("early_stopping",)
PARAMETERS = GENERATION_PARAMETERS + ("seed", "truncation")
MAX_SEED = 2 ** 32 - 1


class RequestError(Exception):
    """A request the server refuses: `status` (HTTP), `kind` (the JSON body's "type") and a message
    that names the problem and the fix."""

    def __init__(self, status: int, kind: str, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message
        self.headers = dict(headers or {})

    def body(self) -> dict[str, str]:
        return {"error": self.message, "type": self.kind}


@dataclasses.dataclass(frozen=True)
class SummarizeRequest:
    """inputs: the documents, in order. generation: overrides of the checkpoint's GenerationConfig, by
    name. seed: the first document's sampling seed (None: the server draws one). truncation: cut an
    over-long document to the encoder's positions (False: such a document is refused with 413)."""

    inputs: tuple[str, ...]
    generation: Mapping[str, Any]
    seed: int | None = None
    truncation: bool = True


def _bad(message: str, kind: str = "invalid_request") -> RequestError:
    return RequestError(400, kind, message)


def _is_integer(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def parse(body: bytes) -> SummarizeRequest:
    """The request a body holds. Raises RequestError (400) for malformed JSON, a wrong type, an unknown
    parameter (named) or an empty list of inputs."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _bad(f"the body is not valid JSON ({e}); send {{\"inputs\": \"text\"}}", "invalid_json") from None
    if not isinstance(data, dict):
        raise _bad(f"the body is a JSON {type(data).__name__}, not an object; send {{\"inputs\": \"text\", "
                   f"\"parameters\": {{...}}}}")
    unknown = sorted(set(data) - {"inputs", "parameters"})
    if unknown:
        raise _bad(f"unknown field {unknown[0]!r}; the body holds \"inputs\" and \"parameters\"", "unknown_field")
    if "inputs" not in data:
        raise _bad("the body has no \"inputs\": send {\"inputs\": \"text\"} or {\"inputs\": [\"text\", ...]}")
    inputs = data["inputs"]
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or any(not isinstance(t, str) for t in inputs):
        raise _bad("\"inputs\" must be a string or a list of strings")
    if not inputs:
        raise _bad("\"inputs\" is an empty list; send at least one document")
    parameters = data.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise _bad("\"parameters\" must be an object of settings, e.g. {\"num_beams\": 4}")
    unknown = sorted(set(parameters) - set(PARAMETERS))
    if unknown:
        raise _bad(f"unknown parameter {unknown[0]!r}; the parameters are: {', '.join(PARAMETERS)}",
                   "unknown_parameter")
    for name, value in parameters.items():
        ok = (_is_integer(value) if name in _INTEGER + ("seed",) else _is_number(value) if name in _NUMBER else
              value in (True, False, "never") if name == "early_stopping" else isinstance(value, bool))
        if not ok:
            what = ("an integer" if name in _INTEGER + ("seed",) else "a number" if name in _NUMBER else
                    "true, false or \"never\"" if name == "early_stopping" else "true or false")
            raise _bad(f"parameter {name!r} must be {what}, got {json.dumps(value)}", "invalid_parameter")
    seed = parameters.get("seed")
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise _bad(f"parameter 'seed' must be in [0, 2**32), got {seed}", "invalid_parameter")
    generation = {k: v for k, v in parameters.items() if k in GENERATION_PARAMETERS}
    return SummarizeRequest(inputs=tuple(inputs), generation=generation, seed=seed,
                            truncation=parameters.get("truncation", True))
