"""Parts of ``benchmarks/e2e_workflows.py``: cells, traces, working sets, pools and server groups
(``plan``), the server subprocess (``server``), ``/metrics`` scraping (``prom``), the sessions and
the time budget (``run``) and the Markdown/PNG report (``report``)."""
