"""Benchmarks, by kind: speed/, profile/, stats/, gpu/; shared helpers in common.py.
Run them from the checkout's root as modules: python -m benchmarks.speed.train_throughput --help"""
