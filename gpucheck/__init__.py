"""`make gpu-check`: every GPU figure and correctness check in one command, at most 8 minutes on one GPU.

    PYTHONPATH=. python3 -m gpucheck [--out DIR] [--budget SECONDS] [--only NAME,...] [--cpu]

Tier 1 needs only torch, torchvision and timm (the trial loop, trainables.classify.train_epochs, is free of Ray);
tier 2, a real fractional-GPU sweep through Ray and MLflow, runs where those are importable. Without CUDA the same
code runs on the CPU at tiny sizes and every figure reads "not measured: no GPU".

    __main__   the supervisor: runs the sections in a worker process, cuts one that overruns, writes the report
    sections   the worker: each section in turn, at GPU or CPU sizes, one event per start and per result
    figures    the tier-1 figures: trainable vs bare loop, data path vs the tutorial way, MFU, packing
    checks     the correctness checks: tests/gpu run through pytest, and what those tests run in fresh processes
    tier2      the real sweeps through Ray and MLflow
    report     figure and check rows, the JSON, the Markdown table and the exit code

Nothing here imports torch at import time except the worker's sections, so the supervisor starts at once.
"""
