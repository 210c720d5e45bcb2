"""Test double of rknn-toolkit-lite2 (package rknnlite)."""
