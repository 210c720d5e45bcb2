"""Test double of rknn-toolkit2 (package rknn)."""
