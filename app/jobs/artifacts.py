"""What a job leaves behind: ``program.npz`` (the contract's program file), ``metrics.jsonl``,
``result.json``, ``curve.png`` and ``program.png``; and the reader that classifies with a
program file the way docs/contract.md tells anyone to, without this service.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from app.data.loading import resize_rgb
from engine.mapping import READOUT_EPS, LinearReadout, ManyToOneMapping
from engine.trainer import Trainer

READOUT_TRANSFORM = f"log(p + {READOUT_EPS:g})"


def program_arrays(
    trainer: Trainer, spec_json: str, classes: list[str], source_labels: tuple[str, ...]
) -> dict[str, np.ndarray]:
    """The contents of ``program.npz`` for the trainer's best program."""
    theta, mapping = trainer.best_program()
    prog = trainer.program
    arrays: dict[str, np.ndarray] = {
        "P": prog.perturbation(theta),
        "mask": prog.mask.copy(),
        "source_labels": np.array(source_labels, dtype=str),
        "target_classes": np.array(classes, dtype=str),
        "target_size": np.array(prog.target_size),
        "input_size": np.array(prog.input_size),
        "spec": np.array(spec_json),
        # The fixed views the read-out also classifies on, in its feature order (docs/contract.md)
        "views": np.array(list(trainer.best_views()), dtype=str),
    }
    if isinstance(mapping, LinearReadout):
        w, b = mapping.exported()
        arrays |= {
            "classifier": np.array("readout"),
            "readout_weight": w,
            "readout_bias": b,
            "readout_transform": np.array(READOUT_TRANSFORM),
            "readout_eps": np.array(READOUT_EPS, dtype=np.float64),
        }
        # The contract's many-to-one mapping stays present as the documented fallback.
        fallback = trainer.baselines.get("frequency")
        arrays["mapping"] = (
            fallback.indices
            if isinstance(fallback, ManyToOneMapping)
            else np.zeros((len(classes), 0), dtype=np.int64)
        )
    else:
        assert isinstance(mapping, ManyToOneMapping)
        arrays |= {"classifier": np.array("mapping"), "mapping": mapping.indices}
    return arrays


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


@dataclass
class ProgramFile:
    """A program file read back; classifies images with any oracle callable."""

    arrays: dict[str, np.ndarray]

    @classmethod
    def load(cls, source: str | Path | bytes) -> ProgramFile:
        data = io.BytesIO(source) if isinstance(source, bytes) else source
        with np.load(data, allow_pickle=False) as npz:
            return cls({k: npz[k] for k in npz.files})

    @property
    def views(self) -> tuple[str, ...]:
        """The fixed views the read-out classifies on besides the programmed frame, in its
        feature order; a file written before views existed has none."""
        return tuple(str(v) for v in self.arrays.get("views", ()))

    @property
    def queries_per_image(self) -> int:
        """Frames sent to the oracle per image classified: the programmed one and each view."""
        return 1 + len(self.views)

    def frames(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """docs/contract.md's recipe: RGB in [0, 1], bilinear resize to target_size, centre in a
        zero frame at ((S − t)//2, (S − t)//2), add P where mask is 1, clip to [0, 1]."""
        s, t = int(self.arrays["input_size"]), int(self.arrays["target_size"])
        out = np.zeros((len(images), s, s, 3), dtype=np.float32)
        o = (s - t) // 2
        for i, img in enumerate(images):
            out[i, o : o + t, o : o + t] = resize_rgb(img, t) / np.float32(255.0)
        p, mask = self.arrays["P"], self.arrays["mask"]
        return np.clip(out + p * mask, 0.0, 1.0)

    def view_frames(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """The "full" view: each image resized to fill the whole S×S frame (bilinear, RGB in
        [0, 1]), no program; what training saw (``app.data.loading.to_full`` / 255)."""
        s = int(self.arrays["input_size"])
        out = np.empty((len(images), s, s, 3), dtype=np.float32)
        for i, img in enumerate(images):
            out[i] = resize_rgb(img, s) / np.float32(255.0)
        return out

    def classify(self, probs: np.ndarray) -> np.ndarray:
        """Target-class index per row of the oracle's probabilities: with views, each row is
        the programmed frame's answer followed by each view's (K·(1 + len(views)) columns),
        as the read-out's weight expects."""
        if str(self.arrays.get("classifier", "mapping")) == "readout":
            eps = float(self.arrays["readout_eps"])
            logits = np.log(probs + eps) @ self.arrays["readout_weight"].T.astype(np.float64)
            return (logits + self.arrays["readout_bias"]).argmax(axis=1)
        mapping = self.arrays["mapping"]
        return probs[:, mapping].mean(axis=2).argmax(axis=1)

    def predict(
        self,
        images: Sequence[np.ndarray],
        oracle: Callable[[np.ndarray], np.ndarray],
        view_images: Sequence[np.ndarray] | None = None,
    ) -> list[str]:
        """Class names of ``images``: the oracle answers the programmed frames and, with views,
        the view frames (``queries_per_image`` frames per image). ``view_images``: the same
        images already at the frame's size, for a caller that decoded them once into both
        sizes (the predict endpoint); by default the views are made from ``images``."""
        # Every frame is built before the first query, so a bad image costs nothing.
        batches = [self.frames(images)]
        if self.views:  # "full", the only view
            batches.append(self.view_frames(images if view_images is None else view_images))
        probs = np.concatenate([oracle(batch) for batch in batches], axis=1)
        classes = self.arrays["target_classes"]
        return [str(classes[i]) for i in self.classify(probs)]


def program_png(arrays: dict[str, np.ndarray], scale: int = 2) -> bytes:
    """An image of P: mid-grey is 0, white +1, black −1; the target area is left grey."""
    p = arrays["P"] * arrays["mask"]
    img = np.clip((p + 1.0) * 127.5, 0, 255).astype(np.uint8)
    pil = Image.fromarray(img)
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


def program_lines(rows: list[dict[str, Any]], value: str) -> dict[str | None, tuple[list, list]]:
    """``value`` against queries, a line per program: a cross-fitted job's two
    half-programs (rows with ``half``) each have their own training loss, which one line
    would zigzag between, and so does each step size of a race (rows with ``lr``: its loss
    and its joint validations). Key None: a job of one program."""
    lines: dict[str | None, tuple[list, list]] = {}
    for r in rows:
        name = None if r.get("half") is None else f"half-program {r['half']}"
        if r.get("lr") is not None:
            name = f"lr {r['lr']:g}" if name is None else f"{name}, lr {r['lr']:g}"
        xs, ys = lines.setdefault(name, ([], []))
        xs.append(r["queries"])
        ys.append(r[value])
    return lines


def curve_png(
    rows: list[dict[str, Any]], baselines: dict[str, dict[str, Any]], title: str
) -> bytes:
    """Accuracy and loss against queries; baselines as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    it = [r for r in rows if r.get("kind") == "iteration"]
    val = [r for r in rows if r.get("val_acc") is not None and r.get("kind") == "validation"]
    for name, (xs, ys) in program_lines(val, "val_acc").items():
        ax_acc.plot(xs, ys, "o-", label="program (validation)" + (f", {name}" if name else ""))
    lines = program_lines(it, "loss")
    for name, (xs, ys) in lines.items():
        ax_loss.plot(xs, ys, lw=0.8, label=name)
    if len(lines) > 1:
        ax_loss.legend(fontsize=8)
    for (name, b), style in zip(baselines.items(), ["--", ":", "-.", (0, (5, 5))], strict=False):
        ax_acc.axhline(
            b["accuracy"],
            ls=style,
            color="grey",
            label=f"{name.replace('_', ' ')} {b['accuracy']:.1%}",
        )
    ax_acc.set(xlabel="queries (images answered)", ylabel="accuracy", title=title, ylim=(0, 1))
    ax_loss.set(xlabel="queries (images answered)", ylabel="training loss (minibatch)")
    if ax_acc.get_legend_handles_labels()[0]:  # an empty legend warns
        ax_acc.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write_outputs(
    out: Path,
    arrays: dict[str, np.ndarray] | None,
    rows: list[dict[str, Any]],
    result: dict[str, Any],
) -> None:
    """Write every artifact of a finished CLI job to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    if arrays is not None:
        (out / "program.npz").write_bytes(npz_bytes(arrays))
        (out / "program.png").write_bytes(program_png(arrays))
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    acc = result.get("test_accuracy")
    title = f"test accuracy {acc:.1%}" if acc is not None else "no test accuracy"
    (out / "curve.png").write_bytes(curve_png(rows, result["baselines"], title))
