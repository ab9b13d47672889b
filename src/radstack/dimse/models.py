"""The DIMSE service's table: DICOM peers (C-MOVE destinations) added through the API."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from radstack.store.models import Base

__all__ = ["PeerRow"]


class PeerRow(Base):
    """A DICOM peer (C-MOVE destination) added through the API; configured peers are not stored."""

    __tablename__ = "peers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ae_title: Mapped[str] = mapped_column(String(16), unique=True)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
