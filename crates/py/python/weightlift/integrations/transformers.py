"""transformers models loaded by weightlift::

    from transformers import AutoModelForCausalLM
    from weightlift.integrations.transformers import from_pretrained

    model = from_pretrained(AutoModelForCausalLM, "path/to/model", device="cuda:0", dtype=torch.float16)

The same model `AutoModelForCausalLM.from_pretrained(path, dtype=...)` gives
(parameters and buffers byte for byte), built without initializing any
weight and filled in place: the model is built with its parameters on the
meta device (buffers, such as rotary frequencies, are computed as usual),
each parameter is then given uninitialized memory on `device` (tied
parameters stay one parameter), and `load_into` writes the checkpoint's
tensors into them as they are read, floating-point ones converted to the
parameter's dtype. Checkpoint tensors that transformers converts on load
(the per-expert weights of mixture-of-experts models, fused into one
tensor per layer since transformers 5) are read by weightlift and handed
to transformers' own conversion, one fused parameter at a time.
"""

import contextlib
import os
from typing import Any, Dict, Iterator, List, Optional, Tuple

from .._api import _cast_dtype, load_into, safe_open
from .._errors import MismatchError, MissingFileError
from ._weights import checkpoint_files


def from_pretrained(
    model_class: Any,
    path: Any,
    *,
    device: Any = "cpu",
    dtype: Any = None,
    config: Any = None,
    strict: bool = True,
    backend: Any = None,
    progress: bool = False,
    pinned_bytes: Optional[int] = None,
    fill_threads: Optional[int] = None,
) -> Any:
    """A transformers model of `model_class` (a model class, or an auto
    class such as AutoModelForCausalLM) with the weights of the local
    directory `path`, on `device`, in evaluation mode.

    dtype: as transformers' `dtype=`: a torch.dtype or its name, or None
        or "auto" for the config's dtype (else the checkpoint's first
        floating-point dtype).
    config: a config to use instead of `path`'s config.json.
    strict: names of the model missing from the checkpoint, or of the
        checkpoint unknown to the model, raise MismatchError (tied
        parameters count as present when one of them is).
    backend, progress, pinned_bytes, fill_threads: as for safe_open.
    """
    import torch
    import transformers

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise MissingFileError(
            f"{path}: not a directory; download the model first (huggingface_hub.snapshot_download)"
        )
    files = checkpoint_files(path)
    if config is None:
        config = transformers.AutoConfig.from_pretrained(path)
    cls = model_class
    if hasattr(model_class, "_model_mapping"):  # an auto class
        from transformers.models.auto.auto_factory import _get_model_class

        cls = _get_model_class(config, model_class._model_mapping)
    dtype = _resolve_dtype(dtype, config, files)
    device = torch.device(device)

    with _parameters_on_meta():
        model = cls._from_config(config, dtype=dtype)
    _materialize(model, device)
    if hasattr(model, "tie_weights"):
        model.tie_weights()

    options = dict(backend=backend, progress=progress, pinned_bytes=pinned_bytes, fill_threads=fill_threads)
    direct, converted, unexpected = _route(model, files)
    targets = model.state_dict(keep_vars=True)
    written = set(direct.values())
    missing = _missing(targets, written, converted)
    if strict and (missing or unexpected):
        raise MismatchError(
            f"{path}: "
            + "; ".join(
                p
                for p in (
                    f"missing from the checkpoint: {sorted(missing)}" if missing else "",
                    f"not in the model: {sorted(unexpected)}" if unexpected else "",
                )
                if p
            )
        )
    # One load_into per target dtype: floating-point tensors are converted
    # to their parameter's dtype as they land (int and bool ones are not).
    by_dtype: Dict[Any, Dict[str, Any]] = {}
    for key, name in direct.items():
        t = targets[name]
        by_dtype.setdefault(t.dtype if t.is_floating_point() else None, {})[key] = t
    for cast, group in by_dtype.items():
        load_into(group, files, strict=False, dtype=cast, **options)
    if converted:
        _convert(model, files, converted, dtype, device, options)
    model.eval()
    _generation_config(model, path)
    return model


def _resolve_dtype(dtype: Any, config: Any, files: List[str]) -> Any:
    """transformers' dtype rule: given, else the config's, else the
    checkpoint's first floating-point dtype."""
    import torch

    if dtype is None or dtype == "auto":
        dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        if dtype is None:
            with safe_open(files) as f:
                for name in f.offset_keys():
                    stored = f.get_tensor_metadata(name).dtype
                    from .._frameworks import torch_dtype

                    dt = torch_dtype(stored, name)
                    if dt.is_floating_point:
                        return dt
            return torch.get_default_dtype()
    return _cast_dtype(dtype)


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Parameters registered meanwhile are moved to the meta device as they
    are registered (their memory is never touched, their initialization
    costs nothing); buffers are made as usual, so non-persistent ones such
    as rotary frequencies hold their values."""
    import torch

    register = torch.nn.Module.register_parameter

    def on_meta(module: Any, name: str, param: Any) -> None:
        register(module, name, param)
        p = module._parameters.get(name)
        if p is not None and not p.is_meta:
            kw = dict(p.__dict__)
            kw["requires_grad"] = p.requires_grad
            module._parameters[name] = type(p)(p.to("meta"), **kw)

    torch.nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


def _materialize(model: Any, device: Any) -> None:
    """Give every meta parameter uninitialized memory on `device` (a
    parameter shared by modules stays one parameter) and move the buffers
    there."""
    import torch

    made: Dict[int, Any] = {}
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is None:
                continue
            if id(p) not in made:
                if p.is_meta:
                    data = torch.empty_like(p, device=device)
                else:
                    data = p.data.to(device)
                made[id(p)] = torch.nn.Parameter(data, requires_grad=p.requires_grad)
            module._parameters[name] = made[id(p)]
        for name, b in list(module._buffers.items()):
            if b is not None and b.device != device:
                module._buffers[name] = b.to(device)


def _route(model: Any, files: List[str]) -> Tuple[Dict[str, str], Dict[str, List[str]], List[str]]:
    """For each checkpoint name: the model name it is written to as it is
    (after transformers' renamings), or the model name of the converted
    parameter it is part of, or neither (unexpected)."""
    with safe_open(files) as f:
        keys = f.offset_keys()
    state = model.state_dict()
    renamings: List[Any] = []
    converters: List[Any] = []
    rename = None
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

        mapping = get_model_conversion_mapping(model)
        renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
        converters = [m for m in mapping if isinstance(m, WeightConverter)]
        rename = rename_source_key
    except ImportError:  # transformers 4: checkpoint names are state_dict names
        pass
    direct: Dict[str, str] = {}
    converted: Dict[str, List[str]] = {}
    unexpected: List[str] = []
    prefix = getattr(model, "base_model_prefix", "")
    for key in keys:
        target, pattern = key, None
        if rename is not None:
            target, pattern = rename(key, renamings, converters, prefix, state)
            if target not in state and key in state:
                target, pattern = rename(key, [], [], prefix, state)
        if target not in state:
            unexpected.append(key)
        elif pattern is not None:
            converted.setdefault(target, []).append(key)
        else:
            direct[key] = target
    return direct, converted, unexpected


def _missing(targets: Dict[str, Any], written: set, converted: Dict[str, List[str]]) -> List[str]:
    """Model names nothing is written to: neither loaded, nor converted,
    nor sharing memory with a loaded one (tied)."""
    filled = set(written) | set(converted)
    ptrs = {(targets[n].data_ptr(), targets[n].dtype, tuple(targets[n].shape)) for n in filled if n in targets}
    return [
        n
        for n, t in targets.items()
        if n not in filled and (t.data_ptr(), t.dtype, tuple(t.shape)) not in ptrs
    ]


def _convert(
    model: Any, files: List[str], converted: Dict[str, List[str]], dtype: Any, device: Any, options: Dict[str, Any]
) -> None:
    """Read the checkpoint tensors that transformers converts, in one pass,
    and hand each converted parameter's sources to transformers' own
    conversion as soon as all of them have landed (so at most the sources
    of the parameters under way are held)."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import convert_and_load_state_dict_in_model
    from transformers.modeling_utils import LoadStateDictConfig
    from transformers.utils import logging as hf_logging

    owner = {k: target for target, keys in converted.items() for k in keys}
    pending: Dict[str, Dict[str, Any]] = {}
    config = LoadStateDictConfig(
        dtype=dtype,
        dtype_plan=model._get_dtype_plan(dtype),
        device_map={"": device},
        weight_mapping=get_model_conversion_mapping(model),
    )
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with safe_open(
            files,
            "pt",
            device if device.type != "cpu" else "cpu",
            keys=list(owner),
            backend=options["backend"],
            progress=options["progress"],
            pinned_bytes=options["pinned_bytes"],
            fill_threads=options["fill_threads"],
        ) as f:
            for key, tensor in f.tensors():
                target = owner[key]
                got = pending.setdefault(target, {})
                got[key] = tensor
                if len(got) == len(converted[target]):
                    del pending[target]
                    info, _ = convert_and_load_state_dict_in_model(model, got, config)
                    errors = list(getattr(info, "error_msgs", None) or []) + [
                        f"{k}: {v}" for k, v in (getattr(info, "conversion_errors", None) or {}).items()
                    ]
                    if errors:
                        raise MismatchError(f"converting {sorted(got)} into {target!r}: {'; '.join(map(str, errors))}")
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _generation_config(model: Any, path: str) -> None:
    """generation_config.json, as from_pretrained reads it."""
    if not (hasattr(model, "can_generate") and model.can_generate()):
        return
    if not os.path.isfile(os.path.join(path, "generation_config.json")):
        return
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig.from_pretrained(path)
