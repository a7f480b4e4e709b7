# The fake servers (python -m tests.fakes.…) load torch: importing `app` first sets the
# service's OpenMP policy (app/__init__.py) in them too, before torch is imported.
import app  # noqa: F401
