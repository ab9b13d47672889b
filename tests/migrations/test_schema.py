"""The migrations make exactly the schema the models describe, on SQLite and on PostgreSQL.

Each package declares its tables in its own ``models.py``; the Alembic migrations make them. Here
``alembic upgrade head`` runs on an empty database and what it made is compared with every model
(:data:`radstack.migrations.target_metadata`) by Alembic's autogenerate comparison: tables, columns,
types, nullability, server defaults, indexes, unique constraints and foreign keys (with their
``ON DELETE``). Autogenerate does not compare a partial index's ``WHERE`` clause, so that is
compared here too (``ux_instances_sop_live`` keeps one current row per SOP Instance UID,
``ux_ai_model_versions_production`` one production version per model, ``ux_ai_results_current`` one
current AI result per study and model).
"""

from __future__ import annotations

import re
from pprint import pformat
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from radstack.migrations import target_metadata
from radstack.store.index import create_index_engine, migrate

Predicates = dict[tuple[str, str], str]


def _predicate(where: Any) -> str | None:
    """A partial index's ``WHERE`` clause in one spelling: PostgreSQL gives it back in parentheses,
    with casts (``(stage)::text = 'production'::text``)."""
    if where is None:
        return None
    text = " ".join(str(where).split()).lower()
    text = re.sub(r"::[a-z ]+?(?=\)|$| )", "", text)
    text = re.sub(r"\((\w+)\)", r"\1", text)
    while re.fullmatch(r"\(.*\)", text):
        text = text[1:-1].strip()
    return text


def _model_predicates(dialect: str) -> Predicates:
    found: Predicates = {}
    for table in target_metadata.tables.values():
        for index in table.indexes:
            where = _predicate(index.dialect_options[dialect]["where"])
            if where is not None and index.name is not None:
                found[table.name, index.name] = where
    return found


def test_migrations_make_the_models_schema(database_url: str) -> None:
    engine = create_index_engine(database_url)
    try:
        migrate(engine)
        dialect = engine.dialect.name
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "compare_server_default": True}
            )
            differences = compare_metadata(context, target_metadata)
            inspector = inspect(connection)
            migrated: Predicates = {}
            for table in inspector.get_table_names():
                for index in inspector.get_indexes(table):
                    where = _predicate(index.get("dialect_options", {}).get(f"{dialect}_where"))
                    if where is not None and index["name"] is not None:
                        migrated[table, index["name"]] = where
    finally:
        engine.dispose()
    assert differences == [], f"the migrations and the models differ:\n{pformat(differences)}"
    assert migrated == _model_predicates(dialect)
    assert migrated == {
        ("instances", "ux_instances_sop_live"): "version_removed is null",
        ("ai_model_versions", "ux_ai_model_versions_production"): "stage = 'production'",
        ("ai_results", "ux_ai_results_current"): "superseded_at is null",
    }
