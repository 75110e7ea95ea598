"""Joining JAX's multi-controller runtime, and the small agreements between its processes."""
