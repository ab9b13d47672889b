"""DICOM networking (DIMSE): the C-ECHO, C-STORE, C-FIND, C-GET and C-MOVE service and its peers."""

from radstack.dimse.peers import Peer, PeerRegistry
from radstack.dimse.scp import DimseServer

__all__ = ["DimseServer", "Peer", "PeerRegistry"]
