"""Helpers shared by the bench scripts; none of them is a benchmark (the Makefile runs only the
top-level ``bench/*.py``).

A script imports them as ``lib.<module>``: ``python bench/X.py`` puts ``bench/`` first on
``sys.path``, and ``app`` comes from the editable install of the project in the venv.
"""
