"""Ketter's arq worker: runs transfers recorded in Postgres, heart-beats, reconciles."""
