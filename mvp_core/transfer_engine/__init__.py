"""Ketter's transfer engine: pure (no DB, no Redis), drives rsync, ssh, zip and unzip.

Public entry points: ``decide_strategy`` (planner), ``run_transfer`` (DIRECT),
``run_transfer_zip_first`` (ZIP_FIRST) and ``execute_plan`` (either, by plan).
"""
