"""Turning a tensor's bytes (a Buffer, exported by DLPack as uint8) into a
torch tensor or a numpy array of the right dtype and shape, without copying.

torch and numpy are imported only when used, so weightlift imports without
either.
"""

from typing import Any, Sequence, Tuple

from ._errors import DtypeError, SettingError

# safetensors dtype -> torch dtype attribute. Byte views make every one of
# these work, including those DLPack cannot name (float8, float4).
_TORCH = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "U16": "uint16",
    "I16": "int16",
    "F16": "float16",
    "BF16": "bfloat16",
    "U32": "uint32",
    "I32": "int32",
    "F32": "float32",
    "F64": "float64",
    "U64": "uint64",
    "I64": "int64",
    "C64": "complex64",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E8M0": "float8_e8m0fnu",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
    # Two 4-bit values per byte: the last dimension is halved.
    "F4": "float4_e2m1fn_x2",
}

# safetensors dtype -> numpy dtype name: torch's name where numpy has the
# type. numpy has no bfloat16, float8 or float4: those raise DtypeError, as
# safetensors' numpy loader does.
_NUMPY = {k: v for k, v in _TORCH.items() if k != "BF16" and not k.startswith(("F8_", "F4"))}

FRAMEWORKS = ("pt", "torch", "np", "numpy")


def check_framework(framework: str) -> str:
    """The canonical name of `framework` ("pt" or "np")."""
    if framework in ("pt", "torch"):
        return "pt"
    if framework in ("np", "numpy"):
        return "np"
    raise SettingError(
        f"framework {framework!r} is not supported: use 'pt' (torch) or 'np' (numpy)"
    )


def torch_dtype(dtype: str, name: str) -> Any:
    """The torch dtype for a safetensors dtype, or DtypeError naming the tensor."""
    import torch

    attr = _TORCH.get(dtype)
    found = getattr(torch, attr, None) if attr else None
    if found is None:
        why = (
            f"torch {torch.__version__} has no {attr}"
            if attr
            else "torch has no such dtype"
        )
        raise DtypeError(f"tensor {name!r} has dtype {dtype}, which {why}")
    return found


def numpy_dtype(dtype: str, name: str) -> Any:
    """The numpy dtype for a safetensors dtype, or DtypeError naming the tensor."""
    import numpy

    attr = _NUMPY.get(dtype)
    if attr is None:
        raise DtypeError(
            f"tensor {name!r} has dtype {dtype}, which numpy cannot represent; "
            "load it with framework='pt'"
        )
    return numpy.dtype(attr)


def framework_shape(dtype: str, shape: Sequence[int], name: str) -> Tuple[int, ...]:
    """The shape the framework sees: F4 packs two values per element."""
    shape = tuple(shape)
    if dtype != "F4":
        return shape
    if not shape or shape[-1] % 2:
        raise DtypeError(
            f"tensor {name!r} is F4 of shape {list(shape)}: its last dimension must be "
            "even to be packed two values per byte (torch.float4_e2m1fn_x2)"
        )
    return shape[:-1] + (shape[-1] // 2,)


def to_framework(framework: str, buf: Any, dtype: str, shape: Sequence[int], name: str) -> Any:
    """A tensor or array of `dtype` and `shape` viewing `buf`'s bytes."""
    if framework == "pt":
        import torch

        dt = torch_dtype(dtype, name)
        shape = framework_shape(dtype, shape, name)
        flat = torch.from_dlpack(buf)
        if dt != torch.uint8:
            flat = flat.view(dt)
        return flat.reshape(shape)
    import numpy

    dt = numpy_dtype(dtype, name)
    flat = numpy.from_dlpack(buf)
    if dt != numpy.uint8:
        flat = flat.view(dt)
    return flat.reshape(tuple(shape))
