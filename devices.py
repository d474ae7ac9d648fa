"""Devices and precision: one meaning of --device and --dtype in every script."""

from contextlib import nullcontext

import torch


def default_device():
    """cuda, then mps, then cpu: the fastest device this PyTorch can use."""
    return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"


def setup_device(name="auto"):
    """The torch.device of a name ("auto": default_device()), checked to exist here; TF32 matmuls on CUDA."""
    try:
        device = torch.device(default_device() if name == "auto" else name)
    except RuntimeError:
        raise ValueError(f"device={name!r} is not a torch device (cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but this PyTorch sees no CUDA GPU")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={name!r} but MPS is not available here")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def resolve_dtype(dtype, device):
    """"auto": bfloat16 where the GPU supports it, else float16 on CUDA, else float32."""
    if dtype != "auto":
        return dtype
    if device.type != "cuda":
        return "float32"
    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"


def autocast_context(device, dtype):
    """What --dtype means everywhere: float32 weights, the forward pass under autocast in dtype (none for float32)."""
    if dtype == "float32":
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=getattr(torch, dtype))
