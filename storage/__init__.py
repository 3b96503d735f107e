"""Persistence for RESI: ORM models, engine and sessions, repository functions, migrations.

It imports no torch and nothing from `app/`, `train/` or `resi_core/` (see docs/STORAGE.md).
"""
