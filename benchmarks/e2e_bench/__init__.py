"""Parts of ``benchmarks/e2e_workflows.py``: trace plan and pool sizing (``plan``), the server
subprocess (``server``), ``/metrics`` scraping (``prom``), the run loop (``run``) and the
Markdown/PNG report (``report``)."""
