"""Hugging Face LED checkpoint directories <-> (LEDConfig, Flax params).

`from_hf` reads `model.safetensors`, sharded safetensors with an index, or `pytorch_model.bin`
(torch's `weights_only` loader: no arbitrary unpickling), for any of the four LED heads, and can
load the shared body into another head. `to_hf` writes `config.json` and `model.safetensors` that
`transformers` loads with no missing or unexpected keys. Every mismatch is an error that lists all
the offending keys.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import NamedTuple

import jax
import numpy as np
import safetensors.numpy

from led_flax.io.checkpoint import check_finite
from led_flax.model.config import HEAD_TO_ARCHITECTURE, LEDConfig
from led_flax.model.heads import expected_shapes, head_of, init_params, model_for
from led_flax.model.quantize import check_not_bitsandbytes
from led_flax.model.stacking import to_layout, unstack_layers
from led_flax.utils.files import write_atomic
from led_flax.utils.trees import flatten, unflatten

from .table import MappingError, _transpose, dotted, rule_for

SAFE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"

# Keys that only a given head has, used to tell heads apart when config.architectures is absent.
_HEAD_KEYS = {
    "conditional_generation": ("final_logits_bias", "lm_head.weight"),
    "sequence_classification": ("classification_head.out_proj.weight",),
    "question_answering": ("qa_outputs.weight",),
}


class HubError(ValueError):
    """A hub id that could not be fetched: huggingface_hub is missing, or the hub is out of reach."""


def fetch_from_hub(repo_id: str) -> str:
    """The local directory of an HF checkpoint on the hub (config, weights, tokenizer files)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise HubError(f"{repo_id} is not a local directory; to fetch it from the hub install huggingface_hub "
                       f"(pip install 'led-flax[hub]')") from None
    try:
        return snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.bin"])
    except Exception as e:  # noqa: BLE001 - offline errors come in many types
        raise HubError(f"could not fetch {repo_id} from the hub ({type(e).__name__}: {e}); the machine is "
                       f"probably offline") from None


class HeadInitialisedWarning(UserWarning):
    """A checkpoint was loaded into another head: the new head's weights are freshly initialised."""


# ---------------------------------------------------------------------------------------------- reading
def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path} is truncated or corrupt and cannot be read ({e}); re-save or re-download "
                         f"the checkpoint") from e


def _read_torch_bin(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"{path} is a PyTorch pickle; reading it needs torch: pip install torch "
                          f"(or re-save the checkpoint as model.safetensors)") from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        raise ValueError(f"{path} could not be read with torch.load(weights_only=True) ({e}); it is corrupt "
                         f"or holds objects other than tensors") from e
    out = {}
    for k, t in state.items():
        t = t.detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:
            import ml_dtypes
            out[k] = t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        else:
            out[k] = t.numpy()
    return out


def read_state_dict(src: str) -> dict[str, np.ndarray]:
    """All tensors of an HF checkpoint directory, by key."""
    if os.path.isfile(os.path.join(src, SAFE)):
        return _read_safetensors(os.path.join(src, SAFE))
    if os.path.isfile(os.path.join(src, SAFE_INDEX)):
        with open(os.path.join(src, SAFE_INDEX), encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        state: dict[str, np.ndarray] = {}
        for shard in sorted(set(weight_map.values())):
            state.update(_read_safetensors(os.path.join(src, shard)))
        missing = sorted(set(weight_map) - set(state))
        if missing:
            raise ValueError(f"{SAFE_INDEX} lists keys that no shard holds: {missing[:10]}")
        return state
    if os.path.isfile(os.path.join(src, TORCH_BIN)):
        return _read_torch_bin(os.path.join(src, TORCH_BIN))
    raise FileNotFoundError(f"{src} holds no LED weights: expected {SAFE}, {SAFE_INDEX} or {TORCH_BIN}")


def _source_head(config: LEDConfig, state: dict) -> str:
    if config.head is not None:
        return config.head
    for head, keys in _HEAD_KEYS.items():
        if any(k in state for k in keys):
            return head
    return "base" if "shared.weight" in state or "encoder.embed_positions.weight" in state else "conditional_generation"


def _body_prefix(head: str) -> str:
    return "" if head == "base" else "led."


def _resolve_tied(state: dict, prefix: str, config: LEDConfig) -> tuple[dict, list[str]]:
    """Fold the tied copies (4.x's embed_tokens and lm_head) into `shared`, checking they are equal. An
    untied checkpoint (tie_word_embeddings false) keeps its four matrices, each mapped on its own."""
    state = dict(state)
    if not config.tie_word_embeddings:
        return state, []
    shared = prefix + "shared.weight"
    copies = [prefix + "encoder.embed_tokens.weight", prefix + "decoder.embed_tokens.weight"]
    if prefix:
        copies.append("lm_head.weight")
    present = [k for k in copies if k in state]
    if shared not in state and present:
        state[shared] = state[present[0]]
    unequal = [k for k in present if k in state and not np.array_equal(state[k], state[shared])]
    if unequal:
        raise MappingError(f"{unequal} should be tied to {shared} but differ from it; the checkpoint is "
                           f"inconsistent (set tie_word_embeddings=false in config.json if they are meant "
                           f"to differ)")
    for k in present:
        del state[k]
    return state, present


def _map_in(state: dict, expected: dict, src_prefix: str, dst_prefix: str, progress=None):
    """HF tensors -> our flat params for every expected path under `dst_prefix`; lists every key
    that is missing or has the wrong shape."""
    params, missing, wrong, used = {}, [], [], set()
    for path, shape in expected.items():
        if not path.startswith(dst_prefix):
            continue
        key, _, from_hf = rule_for(path)
        key = src_prefix + key[len(dotted(dst_prefix)):]
        if key not in state:
            missing.append(key)
            continue
        used.add(key)
        hf_shape = tuple(shape[::-1]) if from_hf is _transpose else tuple(shape)
        if tuple(state[key].shape) != hf_shape:
            wrong.append(f"{key}: checkpoint {tuple(state[key].shape)}, config.json implies {hf_shape}")
            continue
        params[path] = from_hf(state[key])
        if progress is not None:
            progress.update(1)
    return params, used, missing, wrong


def _check(src: str, missing, wrong, unused):
    """Raises MappingError, one line naming every tensor that is missing, of the wrong shape or unused,
    and the fix."""
    problems = []
    if missing:
        problems.append(f"missing from the checkpoint: {missing}")
    if wrong:
        problems.append("shapes that do not match config.json: " + "; ".join(wrong))
    if unused:
        problems.append(f"in the checkpoint but unused: {unused}")
    if problems:
        raise MappingError(f"{src}: the checkpoint does not fit its LED config ({'; '.join(problems)}); it was "
                           f"saved from another model than config.json describes, or edited: put back the "
                           f"config.json and weights that were saved together")


class HFModel(NamedTuple):
    """What `from_hf` reads: the config and the parameter tree (nested dicts of numpy arrays). It
    unpacks as `config, params = from_hf(...)`."""

    config: LEDConfig
    params: dict


def from_hf(src: str | os.PathLike, head: str | None = None, *, rng=None, dtype=None, progress=None,
            scan_layers: bool = True) -> HFModel:
    """An HF LED directory -> `HFModel(config, params)`.

    scan_layers: the parameters in the scanned layout (layers stacked per run, `led_flax.model.stacking`),
    for a model built with `scan_layers=True` (the default); False gives the per-layer layout.
    head: load into this head ('base', 'conditional_generation', 'sequence_classification',
    'question_answering'); default the checkpoint's own. Loading into another head keeps the shared
    body, initialises the new head's weights from `rng` and warns naming them.
    dtype: cast floating params to this numpy dtype (default: keep the checkpoint's).
    progress: an object with `update(n)` (a tqdm bar), advanced once per tensor; a `total` of None
    is set to the number of tensors.
    """
    src = os.fspath(src)
    config = LEDConfig.from_hf(src)
    check_not_bitsandbytes({key: json.loads(text) for key, text in config.extra}, src)
    state = read_state_dict(src)
    check_finite(state, src)  # by the checkpoint's own tensor names
    source = _source_head(config, state)
    target = head or source
    if target not in HEAD_TO_ARCHITECTURE:
        raise ValueError(f"unknown head {target!r}; use one of {sorted(HEAD_TO_ARCHITECTURE)}")
    src_prefix = _body_prefix(source)
    state, _ = _resolve_tied(state, src_prefix, config)
    if source == target:
        config = config.replace(architectures=(HEAD_TO_ARCHITECTURE[target],))
    else:
        config = config.replace(architectures=(HEAD_TO_ARCHITECTURE[target],),
                                num_labels=2 if target == "question_answering" else config.num_labels)
    module = model_for(config, target, scan_layers=False)  # the table maps the per-layer layout
    expected = expected_shapes(config, target)
    if progress is not None and getattr(progress, "total", 0) is None:  # a tqdm bar: its total, the tensors mapped
        progress.total = sum(p.startswith("" if source == target or target == "base" else "led/") for p in expected)

    if source == target:
        flat, used, missing, wrong = _map_in(state, expected, "", "", progress)
        _check(src, missing, wrong, sorted(set(state) - used))
    else:
        dst_prefix = "" if target == "base" else "led/"
        flat, used, missing, wrong = _map_in(state, expected, src_prefix, dst_prefix, progress)
        dropped = sorted(set(state) - used)
        # every tensor of the shared body must be used; only the old head's own tensors may go
        _check(src, missing, wrong, [k for k in dropped if k.startswith(src_prefix)])
        fresh = flatten(jax.device_get(init_params(module, rng)))
        new = sorted(p for p in expected if p not in flat)
        for p in new:
            flat[p] = np.asarray(fresh[p])
        warnings.warn(f"loaded the {source} checkpoint {src} into the {target} head: initialised "
                      f"{new or 'nothing'}; not used: {dropped or 'nothing'}", HeadInitialisedWarning,
                      stacklevel=2)
    if dtype is not None:
        flat = {p: v.astype(dtype) if np.issubdtype(v.dtype, np.floating) or v.dtype.name == "bfloat16" else v
                for p, v in flat.items()}
    return HFModel(config, to_layout(unflatten(flat), config, scan_layers))


# ---------------------------------------------------------------------------------------------- writing
def to_state_dict(config: LEDConfig, params: dict) -> dict[str, np.ndarray]:
    """Our params -> the tensors that transformers' `save_pretrained` would write."""
    state = {}
    for path, value in flatten(unstack_layers(jax.device_get(params), config)).items():
        key, to_hf, _ = rule_for(path)
        state[key] = to_hf(np.asarray(value))
    return state


def to_hf(config: LEDConfig, params: dict, dst: str | os.PathLike) -> str:
    """Writes `config.json` and `model.safetensors` for transformers' `from_pretrained`."""
    dst = os.fspath(dst)
    os.makedirs(dst, exist_ok=True)
    head = head_of(params)
    state = to_state_dict(config, params)
    dtypes = {v.dtype.name for v in state.values()}
    config = config.replace(architectures=(HEAD_TO_ARCHITECTURE[head],))
    hf = config.to_hf()
    hf["dtype"] = "bfloat16" if dtypes == {"bfloat16"} else ("float16" if dtypes == {"float16"} else "float32")
    write_atomic(os.path.join(dst, SAFE), safetensors.numpy.save(state, metadata={"format": "pt"}))
    write_atomic(os.path.join(dst, "config.json"), json.dumps(hf, indent=2) + "\n")
    return dst


__all__ = ["from_hf", "to_hf", "fetch_from_hub", "HubError", "read_state_dict", "to_state_dict",
           "HeadInitialisedWarning"]
