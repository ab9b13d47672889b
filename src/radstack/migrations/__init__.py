"""The index schema: Alembic's migrations (``versions/``) and the one list of the modules that declare it.

Each package owns its tables in its own ``models.py``, declared on the shared
:class:`radstack.store.models.Base`. A table is on ``Base.metadata`` only once its module has been
imported, so this module imports every one of them: Alembic's env (``alembic revision --autogenerate``)
and the test that the migrations make exactly the models' schema both take :data:`target_metadata`
from here. A package that adds a ``models.py`` adds it to :data:`MODEL_MODULES`.
"""

from __future__ import annotations

from types import ModuleType

from sqlalchemy import MetaData

from radstack.ai import models as ai_models
from radstack.dimse import models as dimse_models
from radstack.ingest import models as ingest_models
from radstack.jobs import models as jobs_models
from radstack.labeling import models as labeling_models
from radstack.security import models as security_models
from radstack.store import models as store_models

__all__ = ["MODEL_MODULES", "target_metadata"]

#: Every module that declares tables of the index.
MODEL_MODULES: tuple[ModuleType, ...] = (
    store_models,
    dimse_models,
    ingest_models,
    jobs_models,
    security_models,
    ai_models,
    labeling_models,
)

#: All the tables of the index, as the models describe them: what the migrations must produce.
target_metadata: MetaData = store_models.Base.metadata
