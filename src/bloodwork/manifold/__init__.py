"""Manifold: the workspace files and the sandboxed command runner."""
