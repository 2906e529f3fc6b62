"""Speed settings of a network: channels-last memory layout and torch.compile.

They live in the model config (``model.channels_last``, ``model.compile``) but are not
arguments of any network: ``split_speed_options`` takes them out, so the config a checkpoint
stores (and ``src.eval``/``src.predict`` rebuild) is the plain network's, and ``accelerate``
applies them once where a network is built for training (``src.train``, ``src.bench``).
Neither changes the parameter names: ``accelerate`` compiles ``forward`` in place instead of
wrapping the module, so the state dict has no ``_orig_mod.`` prefix.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

SPEED_KEYS = ("channels_last", "compile")


def split_speed_options(model_config: Mapping) -> tuple[dict, dict]:
    """``(network config, speed options)``: the config without ``SPEED_KEYS`` (what
    instantiates and rebuilds the network) and those keys' values (missing ones: off)."""
    config = dict(model_config)
    options = {key: config.pop(key, False) for key in SPEED_KEYS}
    return config, options


def compile_options(setting: Any) -> dict | None:
    """``model.compile``: false/null (off), true (torch.compile's defaults) or a mapping of
    torch.compile arguments, e.g. ``{mode: max-autotune}`` or ``{backend: aot_eager}``."""
    if setting is None or setting is False:
        return None
    if setting is True:
        return {}
    if isinstance(setting, Mapping):
        return dict(setting)
    raise ValueError(
        "model.compile must be true, false or a mapping of torch.compile arguments; "
        f"got {setting!r}"
    )


def accelerate(net: nn.Module, *, channels_last: bool = False, compile: Any = False) -> nn.Module:
    """Apply the speed options to ``net`` in place and return it.

    ``channels_last``: NHWC weights, and every 4-D input converted on the way in (a forward
    pre-hook), which is what lets cuDNN's tensor-core kernels skip layout transposes; on a
    CPU it mostly costs. ``compile``: see ``compile_options``; the first training step and the
    first validation step each compile (tens of seconds on a GPU, minutes for big nets;
    ``mode: max-autotune`` longer), later steps run compiled. If the compiler is not
    available, or fails on the first call (no C++ compiler or Triton, an unsupported op), a
    warning says so and the network runs eagerly: a run never dies of compile.
    """
    if channels_last:
        net.to(memory_format=torch.channels_last)
        net.register_forward_pre_hook(_to_channels_last)
    options = compile_options(compile)
    if options is not None:
        _compile_forward(net, options)
    return net


def _to_channels_last(module: nn.Module, args: tuple) -> tuple:
    return tuple(
        a.contiguous(memory_format=torch.channels_last)
        if isinstance(a, torch.Tensor) and a.dim() == 4
        else a
        for a in args
    )


def _compile_forward(net: nn.Module, options: dict) -> None:
    """``net.forward`` replaced by its compiled version, falling back to the eager one for
    good on the first failure. (``torch.compile(net)`` would wrap the module and prefix every
    state-dict key with ``_orig_mod.``; ``nn.Module.compile`` keeps the keys but gives no
    place to catch a compiler failure.)"""
    name = type(net).__name__
    if not torch._dynamo.is_dynamo_supported():
        log.warning(
            "model.compile: torch.compile is not supported here (Python %s); %s runs eagerly",
            ".".join(map(str, sys.version_info[:2])),
            name,
        )
        return
    eager = net.forward
    compiled = torch.compile(eager, **options)
    state = {"compiled": True}

    def forward(*args, **kwargs):
        if state["compiled"]:
            try:
                return compiled(*args, **kwargs)
            except Exception as error:  # any compiler failure: run eagerly from now on
                state["compiled"] = False
                log.warning(
                    "model.compile: torch.compile of %s failed (%s: %s); running it eagerly",
                    name,
                    type(error).__name__,
                    str(error).splitlines()[0] if str(error) else "",
                )
        return eager(*args, **kwargs)

    forward.is_compiled = lambda: state["compiled"]  # for tests and the benchmark's record
    net.forward = forward
    log.info(
        "model.compile: %s compiled with %s; the first steps of training and of validation "
        "compile (slow), later ones run compiled",
        name,
        options or "torch.compile's defaults",
    )
