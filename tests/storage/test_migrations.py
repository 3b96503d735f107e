from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select

from storage.db import current_revision, head_revision, make_engine, upgrade
from storage.models import Base

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.mark.parametrize("empty_db_url", BACKENDS, indirect=True)
def test_upgrade_empty_database_to_head_matches_models(empty_db_url: str) -> None:
    engine = make_engine(empty_db_url)
    try:
        assert current_revision(engine) is None
        upgrade(engine)
        assert current_revision(engine) == head_revision()
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        assert diff == []
        assert {"projects", "images", "annotation_events", "jobs"} <= set(inspect(engine).get_table_names())
        upgrade(engine)  # idempotent at head
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


@pytest.mark.parametrize("empty_db_url", ["sqlite"], indirect=True)
def test_downgrade_to_base_and_back(empty_db_url: str) -> None:
    from alembic import command

    from storage.db import alembic_config

    engine = make_engine(empty_db_url)
    try:
        upgrade(engine)
        command.downgrade(alembic_config(engine), "base")
        assert "images" not in inspect(engine).get_table_names()
        upgrade(engine)
        assert "images" in inspect(engine).get_table_names()
    finally:
        engine.dispose()


@pytest.mark.parametrize("empty_db_url", ["sqlite"], indirect=True)
def test_jobs_migration_keeps_data_and_downgrades(empty_db_url: str) -> None:
    from alembic import command
    from sqlalchemy import text

    from storage.db import alembic_config

    engine = make_engine(empty_db_url)
    try:
        upgrade(engine, "0001")
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO projects (name, created_at) VALUES ('kept', '2026-01-01 00:00:00')"))
        assert "jobs" not in inspect(engine).get_table_names()
        upgrade(engine)
        assert "jobs" in inspect(engine).get_table_names()
        with engine.connect() as conn:
            assert conn.execute(text("SELECT name FROM projects")).scalars().all() == ["kept"]
        command.downgrade(alembic_config(engine), "0001")
        assert "jobs" not in inspect(engine).get_table_names() and current_revision(engine) == "0001"
    finally:
        engine.dispose()


@pytest.mark.parametrize("empty_db_url", BACKENDS, indirect=True)
def test_claims_migration_down_and_up_keeps_annotations(empty_db_url: str, tmp_path) -> None:
    from alembic import command

    from storage import repo
    from storage.db import alembic_config, make_session_factory
    from storage.files import FileStore
    from storage.models import AnnotationSegment
    from tests.storage.helpers import png_bytes, segment

    engine = make_engine(empty_db_url)
    try:
        upgrade(engine)
        sessions = make_session_factory(engine)
        with sessions.begin() as s:
            project = repo.create_project(s, "p")
            class_set = repo.set_class_set(s, project.id, ["street"])
            model = repo.register_model_version(s, project.id, "v1", "/c", "0" * 64, [])
            image, _ = repo.add_image(s, FileStore(tmp_path / "images"), project.id, png_bytes(16, 12), "a.png")
            repo.save_proposal(s, image.id, model.id, class_set.id, [segment("a", 12, 16, (0, 0, 4, 4))], 1.0)
        command.downgrade(alembic_config(engine), "0002")
        assert "claimed_by" not in {c["name"] for c in inspect(engine).get_columns("images")}
        with engine.connect() as conn:
            assert conn.execute(select(AnnotationSegment.uid)).all() != []  # nothing cascaded away
        upgrade(engine)
        with sessions() as s:
            assert [x.id for x in repo.current_annotation(s, image.id).segments] == ["a"]
    finally:
        engine.dispose()
