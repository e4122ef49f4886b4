"""Benchmarks of the sweep machinery, measured side by side in one run.

    python -m benchmarks [--json FILE] [--quick] [--only NAME,...]     (python -m tuner.bench also works)

    trainable_vs_bare       images/s of the trials' own loop (trainables.classify.train_epochs, and a real
                            Ray Tune trial of train_classifier) vs a bare PyTorch loop
    augment_vs_torchvision  images/s of BatchAugment on uint8 tensors vs torchvision transforms on PIL images
                            through a DataLoader, on CPU
    per_trial_overhead_s    seconds each trial adds to a 16-trial sweep, 2 at a time, beyond its own work:
                            plain Ray Tune defaults vs our configuration
    asha_epoch_fraction     epochs TPE + ASHA spends vs full-budget random search with as many trials, and
                            the difference of their best validation top-1 (with the noise it is judged by)
    gpu_images_per_s        per model, and packing_speedup for 1/2/4/8 trials per GPU: CUDA only

Each figure's target is in benchmarks.common.TARGETS; each figure is one module here (trainable_vs_bare,
augment_vs_torchvision, per_trial_overhead, asha_vs_random, gpu), benchmarks.suite runs them and
benchmarks.printer prints the report and writes the JSON.

One local Ray instance serves the whole run (its start is reported apart). Nothing is written to MLflow;
Ray Tune's own files go to a temporary folder that is removed at the end.
"""
