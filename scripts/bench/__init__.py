"""`make bench`: normlab's benchmarks, one module each (see BENCHMARKS.md).

* `scripts.bench.norms`: norm layers against flax.linen and an elementwise floor;
* `scripts.bench.training`: train-step throughput (digits CNN, CIFAR ResNet-20) against
  a PyTorch CPU ResNet-20, and the XLA CPU options tried on the way;
* `scripts.bench.scaling`: step time on 1-8 simulated CPU devices, global vs per-device BN;
* `scripts.bench.demo`: wall time of `make demo` from a cold and a warm compilation cache.

``python -m scripts.bench`` runs them all (each in a fresh process) and writes one JSON
per run under ``benchmarks/results/``; ``python -m scripts.bench.report FILE`` prints
its tables.
"""
