"""Runnable evaluation entry points, thin over dermvlm/."""
