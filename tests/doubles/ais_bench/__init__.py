"""Test double of the ais_bench package (see ais_bench/infer/interface.py)."""
