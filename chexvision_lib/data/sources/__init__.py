"""Readers for the public chest X-ray datasets in their published layouts (one module each)."""
