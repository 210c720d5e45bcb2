"""Test double of ais_bench.infer."""
