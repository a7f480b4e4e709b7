"""Images per second of the local oracle (``TorchOracle.predict``: validation, fixed padded
micro-batches, channels-last, softmax, float64 out) against a bare batched forward of the same
model on the same batch, and through the Dispatcher (ledger + retry policy per request).

    python -m bench.oracle_throughput --size 128 --batch 256 --seconds 20
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from adapters.dispatch import Dispatcher
from adapters.torch_local import TorchOracle, _load_bundled, configure_threads
from app.jobs.accounting import MemoryLedger


def rate(fn: Callable[[], object], n_images: int, seconds: float) -> float:
    fn()  # warm up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        done += n_images
    return done / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seconds", type=float, default=20.0)
    a = p.parse_args()
    threads = configure_threads()
    x = np.random.default_rng(0).random((a.batch, a.size, a.size, 3), dtype=np.float32)
    oracle = TorchOracle(input_size=a.size)
    net = _load_bundled("cpu")
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()

    def bare_full() -> object:  # the textbook way: one forward over the whole batch
        with torch.inference_mode():
            return net(xt * 2 - 1).softmax(1)

    def bare_chunked() -> object:  # the best bare forward we found: 16-image chunks
        with torch.inference_mode():
            for i in range(0, a.batch, 16):
                chunk = xt[i : i + 16].contiguous(memory_format=torch.channels_last)
                net(chunk * 2 - 1).softmax(1)

    dispatcher = Dispatcher(oracle, ledger=MemoryLedger(0.0))
    results = {
        "bare forward, whole batch (NCHW)": rate(bare_full, a.batch, a.seconds),
        "bare forward, 16-image channels-last chunks": rate(bare_chunked, a.batch, a.seconds),
        "TorchOracle.predict": rate(lambda: oracle.predict(x), a.batch, a.seconds),
        "Dispatcher.query (ledger, retry policy)": rate(
            lambda: dispatcher.query(x, "bench"), a.batch, a.seconds
        ),
    }
    print(
        f"\n{a.size}×{a.size} images, batch {a.batch}, {threads} threads, "
        f"torch {torch.__version__}\n"
    )
    print("| path | images/s | vs bare whole-batch forward |")
    print("| --- | ---: | ---: |")
    base = results["bare forward, whole batch (NCHW)"]
    for name, r in results.items():
        print(f"| {name} | {r:.0f} | {r / base:.2f}× |")


if __name__ == "__main__":
    main()
