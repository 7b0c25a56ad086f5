"""Inductor lowerings of the mpsk ops into Metal kernel launches (built by the lowerings issue)."""
