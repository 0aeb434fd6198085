"""Benchmarks of the pipeline against their floors, measured side by side in one run.

`python -m bench` (or `make bench`) runs them; bench/figures.py says what a figure, a floor
and a target are. Modules: corpus (the images), inmemory (decode and processing
floors), pipeline (end-to-end runs and latency), indexing, producing, mapreduce, run (order
and clean-up).
"""
