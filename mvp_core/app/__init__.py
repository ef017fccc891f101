"""Ketter's HTTP API (FastAPI): portals, jobs, events, health. It never runs a transfer."""
