"""Deploy PyTorch modules: state dict + architecture, TorchScript, or torch.export."""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import cloudpickle

from clipper_core.connection import ClipperConnection
from clipper_core.deployers.framework import default_progress, deploy_framework_model, pick_model
from clipper_core.errors import BadInput

log = logging.getLogger("clipper_core.deployers")

FORMATS = ("auto", "state_dict", "torchscript", "export")


def _skeleton(module: Any) -> Any:
    """A copy of ``module`` whose parameters and buffers live on the ``meta``
    device: its architecture (code and structure) without the weights, which
    travel in the framework's own format (``torch.save`` of the state dict)."""
    import torch

    memo: dict[int, Any] = {}
    for p in module.parameters():
        memo[id(p)] = torch.nn.Parameter(
            torch.empty_like(p, device="meta"), requires_grad=p.requires_grad
        )
    for b in module.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(module, memo)


def _input_width(module: Any, example_input: Any) -> int | None:
    if example_input is not None:
        shape = tuple(getattr(example_input, "shape", ()))
        return int(shape[1]) if len(shape) == 2 else None
    for sub in module.modules():
        width = getattr(sub, "in_features", None)
        if isinstance(width, int):
            return width
    return None


def _float_dtype(module: Any) -> str | None:
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.is_floating_point():
            return str(tensor.dtype).removeprefix("torch.")
    return None


def deploy_pytorch_model(
    clipper_conn: ClipperConnection,
    name: str,
    version: str | int,
    input_type: str,
    func: Callable[[Any, list[Any]], Sequence[Any]] | None = None,
    model: Any = None,
    base_image: str | None = None,
    labels: list[str] | None = None,
    registry: str | None = None,
    num_replicas: int = 1,
    batch_size: int = -1,
    pkgs_to_install: Sequence[str] | None = None,
    *,
    example_input: Any = None,
    save_format: str = "auto",
    num_threads: int = 0,
    requirements_file: str | os.PathLike[str] | None = None,
    inputs: Iterable[Any] | None = None,
    outputs: Iterable[Any] | None = None,
    progress: Callable[[str], None] | None = default_progress,
    **kwargs: Any,
) -> None:
    """Serve a ``torch.nn.Module`` on the CPU.

    Formats (``save_format``):

    * ``state_dict`` (default without ``example_input``): the weights with
      ``torch.save(model.state_dict())`` (loaded with ``weights_only=True``), the
      architecture as a cloudpickled copy of the module on the ``meta`` device
      (no weights in the pickle).  The container needs the same Python minor
      version (checked at start).  Buffers that are not in the state dict
      (``persistent=False``) come back uninitialised.
    * ``export`` (default with ``example_input``): ``torch.export`` with a dynamic
      batch dimension, saved as a ``.pt2`` program; no pickled code.
    * ``torchscript``: ``torch.jit.script`` (a ``ScriptModule`` is saved as is).

    The container stacks each batch into one tensor (cast to the module's
    floating dtype), calls the module once under ``torch.inference_mode`` and
    returns the first output as a numpy array.  With ``func``,
    ``func(module, inputs)`` is called instead.

    Args:
        clipper_conn: The connection to the server.
        name: Model name.
        version: Model version.
        input_type: Clipper's input type.
        func: Optional ``func(module, inputs) -> outputs``.
        model: The module (``pytorch_model=`` works too, as in Clipper).
        base_image: Accepted for Clipper compatibility; ignored.
        labels: Model labels.
        registry: Accepted for Clipper compatibility; ignored.
        num_replicas: Replicas to start.
        batch_size: -1 adaptive, > 0 fixed (the cap of an adaptive ``controller``).
        pkgs_to_install: pip requirements for an environment of its own (torch
            is pinned to this release unless named; name a CPU build yourself
            where the index would give a CUDA one).
        example_input: A batch (tensor) the module accepts: enables ``export``
            and gives the input width for metadata.
        save_format: ``auto``, ``state_dict``, ``export`` or ``torchscript``.
        num_threads: ``torch.set_num_threads`` in the container (0: default).
        requirements_file: More requirements, from a file.
        inputs: Declared OIP input specs.
        outputs: Declared OIP output specs (default: from a probe prediction
            when the input width is known).
        progress: Where the environment build's lines go.
        **kwargs: Model options (``cpus``, ``memory_limit_mb``, ``controller``, ...).
    """
    import torch

    module = pick_model(model, kwargs, "pytorch_model")
    if save_format not in FORMATS:
        raise BadInput(f"save_format must be one of {FORMATS}")
    if not isinstance(module, torch.nn.Module):
        raise BadInput(f"model must be a torch.nn.Module, not {type(module).__name__}")
    fmt = save_format
    if isinstance(module, torch.jit.ScriptModule):
        fmt = "torchscript"
    elif fmt == "auto":
        fmt = "export" if example_input is not None else "state_dict"
    if fmt == "export" and example_input is None:
        raise BadInput("save_format='export' needs an example_input batch")
    program = None
    if fmt == "export":
        was_training = module.training
        module.eval()
        try:
            program = torch.export.export(
                module,
                (torch.as_tensor(example_input),),
                dynamic_shapes=({0: torch.export.Dim("batch")},),
            )
        except Exception as exc:
            if save_format == "export":
                raise BadInput(f"torch.export failed: {exc}") from exc
            log.warning("torch.export failed (%s); saving a state dict instead", exc)
            fmt = "state_dict"
        finally:
            module.train(was_training)
    options: dict[str, Any] = {
        "format": fmt,
        "dtype": _float_dtype(module),
        "input_width": _input_width(module, example_input),
        "num_threads": num_threads,
    }

    def save(folder: Path) -> dict[str, Any]:
        if program is not None:
            torch.export.save(program, str(folder / "model.pt2"))
            return {**options, "file": "model.pt2"}
        if fmt == "torchscript":
            scripted = (
                module if isinstance(module, torch.jit.ScriptModule) else torch.jit.script(module)
            )
            torch.jit.save(scripted, str(folder / "model.pt"))
            return {**options, "file": "model.pt"}
        torch.save(module.state_dict(), str(folder / "model.pt"))
        with open(folder / "module.pkl", "wb") as f:
            cloudpickle.dump(_skeleton(module), f)
        return {**options, "file": "model.pt", "module": "module.pkl"}

    packages = [("torch", "present")]
    if fmt == "state_dict":
        packages.append(("cloudpickle", "exact"))
    deploy_framework_model(
        clipper_conn,
        name,
        version,
        input_type,
        adapter="pytorch",
        save=save,
        func=func,
        packages=packages,
        pickled_code=fmt == "state_dict",
        inputs=inputs,
        outputs=outputs,
        labels=labels,
        num_replicas=num_replicas,
        batch_size=batch_size,
        pkgs_to_install=pkgs_to_install,
        requirements_file=requirements_file,
        progress=progress,
        **kwargs,
    )
