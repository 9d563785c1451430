"""The parts of profiling live models (:mod:`langchain_rtr.collect` runs them).

``results``: what a run reports; ``output``: the append-only JSONL file and reading it back;
``progress``: the terminal progress bar.
"""
