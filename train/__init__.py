"""Runnable training entry points, thin over dermvlm/."""
