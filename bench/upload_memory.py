"""Peak server memory while it accepts (or refuses) the worst uploads its limits allow.

Each case starts a fresh ``reprogram serve`` (embedded mode, default limits unless the case
says otherwise), reads its resident memory once it answers (``VmRSS``), sends one upload,
and reads the process's peak resident memory (``VmHWM``, Linux) afterwards:

* ``pixels, refused``: the issue's case, 16 flat 6300×6300 PNGs (635 Mpx in a 2 MB zip),
  above ``REPROGRAM_MAX_UPLOAD_PIXELS`` (256 Mpx): 413 from the headers, nothing decoded.
* ``pixels, worst accepted``: 6 of them (238 Mpx, under the budget; each under the
  40 Mpx per image): every image decoded, one at a time.
* ``bytes, worst accepted``: a zip of noisy 1 Mpx PNGs just under
  ``REPROGRAM_MAX_UPLOAD_BYTES`` (200 MiB): the body itself is the largest thing held.
* ``npz, worst accepted``: an .npz whose x holds 256 Mpx (256×1000×1000×1, compressed
  about 4:1): its images are never loaded to check it.

    python -m bench.upload_memory --out bench/results/upload_memory.md
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench.server import create_token, server_env, start, stop, wait_healthy
from tests.live import free_port

SIDE = 6300  # 39.7 Mpx: under the 40 Mpx per image


def flat_png(side: int = SIDE) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (120, 30, 200)).save(buf, format="PNG")
    return buf.getvalue()


def flat_zip(n: int) -> bytes:
    png = flat_png()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for i in range(n):
            zf.writestr(f"{'ab'[i % 2]}/{i}.png", png)
    return buf.getvalue()


def noisy_zip(max_bytes: int) -> bytes:
    """Noisy 1000×1000 RGB PNGs (each ~3 MB, incompressible) up to just under max_bytes."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        i = 0
        while True:
            png = io.BytesIO()
            img = rng.integers(0, 255, (1000, 1000, 3), dtype=np.uint8)
            Image.fromarray(img).save(png, format="PNG", compress_level=1)
            if buf.tell() + len(png.getvalue()) + 64 * 1024 > max_bytes:
                break
            zf.writestr(f"{'ab'[i % 2]}/{i}.png", png.getvalue())
            i += 1
    return buf.getvalue()


def big_npz(pixels: int) -> bytes:
    """Grey images of 2-bit noise: compressed about 4:1, under the zip-bomb ratio."""
    n = pixels // 1_000_000
    x = np.random.default_rng(0).integers(0, 4, (n, 1000, 1000, 1), dtype=np.uint8) * 60
    buf = io.BytesIO()
    np.savez_compressed(buf, x=x, y=np.arange(n) % 2)
    return buf.getvalue()


def proc_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def run_case(name: str, filename: str, build: Callable[[], bytes]) -> dict:
    content = build()
    with tempfile.TemporaryDirectory() as tmp:
        env, _ = server_env(Path(tmp), embedded_workers=None)
        token = create_token(env)
        port = free_port()
        server = start(["serve", "--port", str(port)], env)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, server)
            time.sleep(1.0)
            before = proc_kb(server.pid, "VmRSS")
            t0 = time.monotonic()
            r = httpx.post(
                f"{url}/v1/datasets",
                headers={"Authorization": f"Bearer {token}"},
                files={"file": (filename, content)},
                timeout=600,
            )
            seconds = time.monotonic() - t0
            peak = proc_kb(server.pid, "VmHWM")
        finally:
            stop([server])
    return {
        "case": name,
        "upload_mb": len(content) / 1e6,
        "status": r.status_code,
        "detail": "" if r.status_code < 300 else str(r.json().get("detail"))[:90],
        "rss_before_mb": before / 1024,
        "peak_mb": peak / 1024,
        "seconds": seconds,
    }


CASES = {
    "pixels, refused (16 × 6300², 635 Mpx)": ("flat16.zip", lambda: flat_zip(16)),
    "pixels, worst accepted (6 × 6300², 238 Mpx)": ("flat6.zip", lambda: flat_zip(6)),
    "bytes, worst accepted (noisy PNGs, < 200 MiB)": (
        "noisy.zip",
        lambda: noisy_zip(200 * 1024**2),
    ),
    "npz, worst accepted (256 × 1000², 256 Mpx)": ("big.npz", lambda: big_npz(256_000_000)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--case", action="append", help="substring of the cases to run")
    args = parser.parse_args()
    rows = [
        run_case(name, filename, build)
        for name, (filename, build) in CASES.items()
        if not args.case or any(c in name for c in args.case)
    ]
    load = os.getloadavg()
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, load average "
        f"{load[0]:.1f}; default limits (`REPROGRAM_MAX_UPLOAD_BYTES` 200 MiB, "
        "`REPROGRAM_MAX_IMAGE_PIXELS` 40 M, `REPROGRAM_MAX_UPLOAD_PIXELS` 256 M).",
        "",
        "| upload | size | answer | server RSS before | peak RSS | time |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        answer = f"{r['status']}" + (f" ({r['detail']})" if r["detail"] else "")
        lines.append(
            f"| {r['case']} | {r['upload_mb']:.1f} MB | {answer} | {r['rss_before_mb']:.0f} MB "
            f"| {r['peak_mb']:.0f} MB | {r['seconds']:.1f} s |"
        )
    lines += ["", "```sh", "python -m bench.upload_memory --out bench/results/upload_memory.md"]
    lines += ["```"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
