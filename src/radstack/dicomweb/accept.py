"""Accept header negotiation for DICOMweb (PS3.18 §8.7)."""

from __future__ import annotations

from dataclasses import dataclass

from radstack.dicomweb.multipart import parse_media_type, split_unquoted

__all__ = ["AcceptItem", "parse_accept"]


@dataclass(frozen=True, slots=True)
class AcceptItem:
    """One acceptable representation: ``multipart/related; type=…`` is unwrapped into ``part_type``."""

    media_type: str
    params: dict[str, str]
    quality: float

    @property
    def multipart(self) -> bool:
        return self.media_type == "multipart/related"

    @property
    def part_type(self) -> str:
        """The media type of each part (``type`` parameter), or the media type itself."""
        if self.multipart:
            return self.params.get("type", "").lower()
        return self.media_type

    @property
    def transfer_syntax(self) -> str | None:
        return self.params.get("transfer-syntax")


def parse_accept(header: str | None) -> list[AcceptItem]:
    """Parse an Accept header into items, best first (stable for equal quality).

    An absent header is ``*/*``. Commas inside quoted parameters are respected.
    """
    if not header or not header.strip():
        return [AcceptItem("*/*", {}, 1.0)]
    items: list[tuple[float, int, AcceptItem]] = []
    for index, raw in enumerate(split_unquoted(header, ",")):
        if not raw.strip():
            continue
        media_type, params = parse_media_type(raw)
        try:
            quality = float(params.pop("q", "1"))
        except ValueError:
            quality = 1.0
        if quality <= 0:
            continue
        items.append((-quality, index, AcceptItem(media_type, params, quality)))
    return [item for _q, _i, item in sorted(items, key=lambda t: (t[0], t[1]))]
