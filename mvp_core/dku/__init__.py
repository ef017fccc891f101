"""DKU: the operator's one command to know whether Ketter works on this host.

``python -m mvp_core.dku`` (``make dku``) runs the checks in :mod:`.checks` and
:mod:`.portals`, the smoke transfers in :mod:`.smoke`, and writes the report of
:mod:`.report` to ``docs/dku_reports/``. Exit 0 when nothing failed, 1 otherwise.
"""
