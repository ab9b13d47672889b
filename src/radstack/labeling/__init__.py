"""Labeling: projects, reader tasks, labels from SR/SEG, consensus, agreement, exports."""

__all__: list[str] = []
