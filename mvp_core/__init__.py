"""Ketter 3.0 MVP core: transfer engine, data model, API, worker and DKU."""
