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
import difflib
import json
import math
import numbers
from typing import Any, Mapping

from led_flax.decoding.settings import MAX_SEED

# the generation settings a request may set, and the JSON types each takes
_INTEGER = ("max_length", "max_new_tokens", "min_length", "num_beams", "no_repeat_ngram_size", "top_k")
_NUMBER = ("length_penalty", "repetition_penalty", "temperature", "top_p")
_FLAG = ("do_sample",)
GENERATION_PARAMETERS = _INTEGER + _NUMBER + _FLAG + ("early_stopping",)
PARAMETERS = GENERATION_PARAMETERS + ("seed", "truncation")
# each number's range, checked here so that the message names the parameter as the client sent it
_RANGES = {
    "max_length": (lambda v: v >= 2, ">= 2 (it counts the decoder start token)"),
    "max_new_tokens": (lambda v: v >= 1, ">= 1"),
    "min_length": (lambda v: v >= 0, ">= 0"),
    "num_beams": (lambda v: v >= 1, ">= 1 (1: greedy)"),
    "no_repeat_ngram_size": (lambda v: v >= 0, ">= 0 (0: off)"),
    "top_k": (lambda v: v >= 0, ">= 0 (0: off)"),
    "length_penalty": (lambda v: True, "a finite number"),
    "repetition_penalty": (lambda v: v > 0, "> 0 (1.0: off)"),
    "temperature": (lambda v: v > 0, "> 0 (1.0: off)"),
    "top_p": (lambda v: 0 < v <= 1, "in (0, 1] (1.0: off)"),
    "seed": (lambda v: 0 <= v <= MAX_SEED, "in [0, 2**32)"),
}


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


def _unknown(names, known, what: str) -> RequestError:
    """400 naming every unknown name, with the nearest known one where there is one."""
    parts = []
    for name in sorted(names, key=str):
        near = difflib.get_close_matches(str(name), known, n=1)
        parts.append(f"{name!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
    plural = "s" if len(parts) > 1 else ""
    return _bad(f"unknown {what}{plural} {', '.join(parts)}; the {what}s are: {', '.join(known)}", f"unknown_{what}")


def parse(body: bytes, *, max_inputs: int | None = None, max_num_beams: int | None = None) -> SummarizeRequest:
    """The request a body holds. Raises RequestError: 400 for malformed JSON, a wrong type, a number
    out of its range or not finite, an unknown parameter (each named), an empty list of inputs, or
    num_beams over `max_num_beams`; 413 for more inputs than `max_inputs` (the server's queue)."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _bad(f"the body is not valid JSON ({e}); send {{\"inputs\": \"text\"}}", "invalid_json") from None
    if not isinstance(data, dict):
        raise _bad(f"the body is a JSON {type(data).__name__}, not an object; send {{\"inputs\": \"text\", "
                   f"\"parameters\": {{...}}}}")
    unknown = set(data) - {"inputs", "parameters"}
    if unknown:
        raise _unknown(unknown, ["inputs", "parameters"], "field")
    if "inputs" not in data:
        raise _bad("the body has no \"inputs\": send {\"inputs\": \"text\"} or {\"inputs\": [\"text\", ...]}")
    inputs = data["inputs"]
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list):
        raise _bad(f"\"inputs\" must be a string or a list of strings, got a JSON {type(inputs).__name__}")
    wrong = [j for j, t in enumerate(inputs) if not isinstance(t, str)]
    if wrong:
        raise _bad(f"inputs[{wrong[0]}] is a JSON {type(inputs[wrong[0]]).__name__}, not a string; every input is "
                   f"a document's text")
    if not inputs:
        raise _bad("\"inputs\" is an empty list; send at least one document")
    if max_inputs is not None and len(inputs) > max_inputs:
        raise RequestError(413, "too_many_inputs", f"{len(inputs)} inputs in one request, more than the server's "
                                                   f"queue holds ({max_inputs}); send at most {max_inputs} per request")
    parameters = data.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise _bad("\"parameters\" must be an object of settings, e.g. {\"num_beams\": 4}")
    unknown = set(parameters) - set(PARAMETERS)
    if unknown:
        raise _unknown(unknown, list(PARAMETERS), "parameter")
    for name, value in parameters.items():
        ok = (_is_integer(value) if name in _INTEGER + ("seed",) else _is_number(value) if name in _NUMBER else
              value in (True, False, "never") if name == "early_stopping" else isinstance(value, bool))
        if not ok:
            what = ("an integer" if name in _INTEGER + ("seed",) else "a number" if name in _NUMBER else
                    "true, false or \"never\"" if name == "early_stopping" else "true or false")
            raise _bad(f"parameter {name!r} must be {what}, got {json.dumps(value)}", "invalid_parameter")
        if name in _RANGES:
            in_range, rule = _RANGES[name]
            if not ((isinstance(value, int) or math.isfinite(value)) and in_range(value)):
                raise _bad(f"parameter {name!r} must be {rule}, got {json.dumps(value)}", "invalid_parameter")
    if max_num_beams is not None and parameters.get("num_beams", 1) > max_num_beams:
        raise _bad(f"parameter 'num_beams' is {parameters['num_beams']}, over this server's limit of {max_num_beams} "
                   f"(--max-num-beams); use at most {max_num_beams}", "invalid_parameter")
    seed = parameters.get("seed")
    generation = {k: v for k, v in parameters.items() if k in GENERATION_PARAMETERS}
    return SummarizeRequest(inputs=tuple(inputs), generation=generation, seed=seed,
                            truncation=parameters.get("truncation", True))
