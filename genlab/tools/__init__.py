"""Developer tools, apart from the runtime: datasets (`data`), evaluation (`eval`) and the benchmark (`bench`).

Run as `python -m genlab.data ...`, `python -m genlab.eval ...` and `python -m genlab.bench`.
"""
