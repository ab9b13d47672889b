"""DICOM peers: configuration, the ``/api/v1/peers`` API, persistence in the index (migration 0002)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from radstack.config import PeerSetting, Settings
from tests import authed
from tests.conftest import RunningServer, free_port, start_server

PACS = PeerSetting(ae_title="PACS", host="10.0.0.5", port=104)


@pytest.fixture
def with_config(settings: Settings) -> Iterator[RunningServer]:
    yield from start_server(settings.model_copy(update={"peers": [PACS]}))


def peers_url(server: RunningServer, ae_title: str = "") -> str:
    return f"{server.url}/api/v1/peers" + (f"/{ae_title}" if ae_title else "")


def test_put_get_list_delete(with_config: RunningServer) -> None:
    server = with_config
    created = authed.put(peers_url(server, "VIEWER"), json={"host": "viewer.local", "port": 11113})
    assert created.status_code == 201
    assert created.json() == {"ae_title": "VIEWER", "host": "viewer.local", "port": 11113, "source": "api"}
    changed = authed.put(peers_url(server, "VIEWER"), json={"host": "192.168.1.9", "port": 4242})
    assert changed.status_code == 200
    assert authed.get(peers_url(server, "VIEWER")).json()["host"] == "192.168.1.9"
    listed = authed.get(peers_url(server)).json()
    assert listed == [
        {"ae_title": "PACS", "host": "10.0.0.5", "port": 104, "source": "config"},
        {"ae_title": "VIEWER", "host": "192.168.1.9", "port": 4242, "source": "api"},
    ]
    assert authed.delete(peers_url(server, "VIEWER")).status_code == 204
    assert authed.get(peers_url(server, "VIEWER")).status_code == 404
    assert authed.delete(peers_url(server, "VIEWER")).status_code == 404
    assert [p["ae_title"] for p in authed.get(peers_url(server)).json()] == ["PACS"]


def test_configured_peer_is_read_only(with_config: RunningServer) -> None:
    server = with_config
    assert authed.get(peers_url(server, "PACS")).json()["source"] == "config"
    for response in (
        authed.put(peers_url(server, "PACS"), json={"host": "10.0.0.6", "port": 104}),
        authed.delete(peers_url(server, "PACS")),
    ):
        assert response.status_code == 409
        assert "RADSTACK_PEERS" in response.json()["detail"]


@pytest.mark.parametrize(
    ("ae_title", "body", "detail"),
    [
        ("SEVENTEEN-CHARS-X", {"host": "h", "port": 104}, "1 to 16 printable ASCII characters"),
        ("OK", {"host": "two words", "port": 104}, "is not a host name or IP address"),
        ("OK", {"host": "h", "port": 0}, "port"),
        ("OK", {"host": "h"}, "port"),
    ],
)
def test_bad_peer_is_refused(
    server: RunningServer, ae_title: str, body: dict[str, object], detail: str
) -> None:
    response = authed.put(peers_url(server, ae_title), json=body)
    assert response.status_code == 400
    assert detail in response.json()["detail"]
    assert authed.get(peers_url(server)).json() == []


def test_api_peers_survive_a_restart(settings: Settings) -> None:
    running = start_server(settings)
    server = next(running)
    assert (
        authed.put(peers_url(server, "ARCHIVE"), json={"host": "127.0.0.1", "port": 5104}).status_code == 201
    )
    running.close()
    again = settings.model_copy(update={"http_port": free_port(), "dicom_port": free_port()})
    running = start_server(again)
    server = next(running)
    try:
        assert authed.get(peers_url(server, "ARCHIVE")).json()["port"] == 5104
    finally:
        running.close()


def test_peers_setting() -> None:
    settings = Settings(peers=[{"ae_title": " PACS ", "host": "pacs", "port": 104}])
    assert settings.peers == [PeerSetting(ae_title="PACS", host="pacs", port=104)]
    with pytest.raises(ValidationError, match="PACS appear more than once"):
        Settings(peers=[PACS, PACS])
    with pytest.raises(ValidationError):
        Settings(peers=[{"ae_title": "PACS", "host": "pacs", "port": 70000}])
    with pytest.raises(ValidationError, match="is not a host name or IP address"):
        Settings(peers=[{"ae_title": "PACS", "host": "http://pacs/", "port": 104}])
