"""Shared Keras layers."""
