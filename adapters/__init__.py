"""The outside world behind one Oracle interface: local models and cloud APIs."""

import os

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. Spinning wins ~10 %
# for one process alone, but two torch processes on 2 cores (a worker beside the API, the
# fake servers beside a test) then run 2-3x slower in total (measured: 2x75 vs 2x180 img/s).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
