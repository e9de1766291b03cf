"""The one rule by which every tool here imports ``seedream_jax``: from the checkout it lives in.

Each tool's first import is ``import _bootstrap``. Run as ``python <checkout>/tools/<tool>.py``
from any directory, Python puts ``tools/`` on ``sys.path``; this module then puts the checkout's
root (``tools/..``) first, so the tool uses the package beside it, whatever copy of
``seedream_jax`` is installed (pip, an editable install of another checkout) or on ``PYTHONPATH``.
If another copy was imported already (a tool imported as a module by a process that uses a
different checkout), it fails naming both rather than mixing two copies in one process. It
imports nothing itself: ``tools/plan.py`` still sets ``XLA_FLAGS`` before JAX starts.
"""
import os
import sys

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def use_this_checkout(checkout: str = CHECKOUT) -> None:
    """Put ``checkout`` first on ``sys.path``; fail if a ``seedream_jax`` from elsewhere is loaded."""
    loaded = sys.modules.get("seedream_jax")
    if loaded is not None and getattr(loaded, "__file__", None):
        package_dir = os.path.dirname(os.path.abspath(loaded.__file__))
        if os.path.realpath(os.path.dirname(package_dir)) != os.path.realpath(checkout):
            raise ImportError(f"this tool belongs to the checkout {checkout}, but this process already imported "
                              f"seedream_jax from {package_dir}; run the tool as a script "
                              f"(python {checkout}/tools/<tool>.py) or from that other checkout")
    if not sys.path or os.path.realpath(sys.path[0] or os.getcwd()) != os.path.realpath(checkout):
        sys.path.insert(0, checkout)


use_this_checkout()
