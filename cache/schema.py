"""The cache schema (SQLite or a server database), as SQLAlchemy 2 typed ORM models."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

SCHEMA_VERSION = 3  # 1: before memory figures and blind answers; 2: before timings side by side (migrations.py)


def _now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Meta(Base):
    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class EvaluationRow(Base):
    """One schedule run on one setting and device, with its image and metrics."""

    __tablename__ = "evaluations"
    __table_args__ = (UniqueConstraint("model", "model_hash", "settings_hash", "schedule_hash", "device_hash",
                                       name="uq_evaluation_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String(128), index=True)
    model_hash: Mapped[str] = mapped_column(String(32))
    settings: Mapped[dict] = mapped_column(JSON)
    settings_hash: Mapped[str] = mapped_column(String(32), index=True)
    schedule: Mapped[str] = mapped_column(Text)
    schedule_hash: Mapped[str] = mapped_column(String(32))
    device: Mapped[dict] = mapped_column(JSON)
    device_hash: Mapped[str] = mapped_column(String(32))
    image_sha256: Mapped[str] = mapped_column(String(64))
    ssim: Mapped[float | None] = mapped_column(Float)
    psnr: Mapped[float | None] = mapped_column(Float)
    lpips: Mapped[float | None] = mapped_column(Float)
    lpips_note: Mapped[str] = mapped_column(Text, default="")
    measured_seconds: Mapped[float] = mapped_column(Float)
    predicted_seconds: Mapped[float | None] = mapped_column(Float)
    steps_run: Mapped[list] = mapped_column(JSON)
    simulated: Mapped[list] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=_now)
    # Version 2: the image's peak GPU memory (host, without a GPU) and how its model was placed (None before).
    peak_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    memory: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    # Version 3: the reference's seconds timed beside this image, in the same process just before it (None before,
    # and for images timed alone): the measured speed-up divides two seconds of one moment.
    reference_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)


class SearchRunRow(Base):
    __tablename__ = "search_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String(128))
    request: Mapped[dict] = mapped_column(JSON)
    result: Mapped[dict | None] = mapped_column(JSON)
    started_at: Mapped[datetime] = mapped_column(default=_now)
    finished_at: Mapped[datetime | None] = mapped_column()
    evaluations: Mapped[list[SearchLinkRow]] = relationship(back_populates="run")


class SearchLinkRow(Base):
    __tablename__ = "search_evaluations"

    run_id: Mapped[int] = mapped_column(ForeignKey("search_runs.id"), primary_key=True)
    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id"), primary_key=True)
    run: Mapped[SearchRunRow] = relationship(back_populates="evaluations")


class CostTableRow(Base):
    """Measured per-precision step costs for one model and device."""

    __tablename__ = "cost_tables"
    __table_args__ = (UniqueConstraint("model_hash", "settings_hash", "device_hash", name="uq_cost_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_hash: Mapped[str] = mapped_column(String(32))
    settings_hash: Mapped[str] = mapped_column(String(32))
    device_hash: Mapped[str] = mapped_column(String(32))
    table: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=_now)


class ImageBlob(Base):
    """A PNG by its SHA-256, for server databases (an SQLite cache keeps them as files beside it)."""

    __tablename__ = "images"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    png: Mapped[bytes] = mapped_column(LargeBinary)


class BlindAnswerRow(Base):
    """One answer of the blind test: a person shown a schedule's image and its reference in random order, asked
    which is full precision (``right``, ``wrong`` or ``unsure``)."""

    __tablename__ = "blind_answers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id"), index=True)
    answer: Mapped[str] = mapped_column(String(16))
    # Version 3: which browser session answered, as a salted hash (never the session id itself; None before).
    session: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=_now)
