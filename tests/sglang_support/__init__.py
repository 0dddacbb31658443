"""Test support for driving SGLang's real cache layer on a CPU-only machine.

Importing this package imports SGLang's cache layer (it must be installed: see
``scripts/install_sglang_cpu.sh``); a missing SGLang is an ImportError, so the tests fail
rather than skip. Nothing here is installed or put on ``sys.path`` for users: the
``torchvision`` stand-in lives in ``sys.modules`` only while SGLang's modules import.
"""
from sglang_support.standins import import_sglang_cache_layer

import_sglang_cache_layer()
